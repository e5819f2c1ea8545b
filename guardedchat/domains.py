"""Domains as data: returns validated `Domain` objects loaded from domains/<id>/domain.yaml."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DomainError, UnknownDomainError

DOMAIN_FILE = "domain.yaml"
ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_CJK_SPACE = re.compile(r"(?<=[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]) (?=[\u3000-\u303f\u3400-\u9fff\uff00-\uffef])")


def default_domains_dir() -> Path:
    """The domains folder: $GUARDEDCHAT_DOMAINS, else ./domains, else the one beside the package."""
    env = os.environ.get("GUARDEDCHAT_DOMAINS")
    if env:
        return Path(env)
    here = Path.cwd() / "domains"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "domains"


class _Strict(BaseModel):
    # Unknown keys are almost always typos (greting:, examples.in_scop:); fail loudly on them.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Scope(_Strict):
    in_scope: str = Field(min_length=1)
    out_of_scope: str = Field(min_length=1)


class Examples(_Strict):
    in_scope: list[str] = Field(min_length=1)
    out_of_scope: list[str] = Field(default_factory=list)


class FewShot(_Strict):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class Vocabulary(_Strict):
    keep: list[str] = Field(default_factory=list)
    replace: dict[str, str] = Field(default_factory=dict)

    @field_validator("keep")
    @classmethod
    def _keep_entries_can_match(cls, value: list[str]) -> list[str]:
        for phrase in value:
            _check_phrase(phrase)
        return value

    @field_validator("replace")
    @classmethod
    def _replace_entries_can_match(cls, value: dict[str, str]) -> dict[str, str]:
        for phrase, replacement in value.items():
            _check_phrase(phrase)
            if not replacement or re.search(r"\s", replacement):
                # OpenCC's text dictionaries separate alternatives with a space: "3D 列印" would come out as "3D".
                raise ValueError(f"「{phrase}」的替換字「{replacement}」是空的或含空白，詞典寫不進去；請改成不含空白的詞")
        return value


def _check_phrase(phrase: str) -> None:
    # Text is converted between whitespace and punctuation only, so a phrase holding either never matches.
    from .taiwan import BOUNDARY_CHARS

    if not phrase or any(char in BOUNDARY_CHARS for char in phrase):
        raise ValueError(f"「{phrase}」是空的或含空白、標點，永遠對不到（文字在空白與標點處切開）；請只寫詞本身")


class Generation(_Strict):
    max_tokens: int = Field(default=200, ge=1, le=8192)
    temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.15, ge=1.0, le=2.0)


class GateSettings(_Strict):
    threshold: Optional[float] = Field(default=None, ge=0.0, le=1.0)


class Domain(_Strict):
    id: str
    title: str = Field(min_length=1)
    description: Scope
    system_prompt: str = Field(min_length=1)
    refusal: str = Field(min_length=1)
    greeting: str = Field(min_length=1)
    examples: Examples
    fewshot: list[FewShot] = Field(default_factory=list)
    lexicon: dict[str, list[str]] = Field(default_factory=dict)
    # Groups of names or words that mean the same here (國姓爺 ↔ 鄭成功, supervisor mode ↔ S 模式):
    # answer extraction matches any form of a group; guardedchat/data/aliases.yaml holds the general ones.
    aliases: list[list[str]] = Field(default_factory=list)
    banned_words: list[str] = Field(default_factory=list)
    facts: list[str] = Field(default_factory=list)
    vocabulary: Vocabulary = Field(default_factory=Vocabulary)
    generation: Generation = Field(default_factory=Generation)
    gate: GateSettings = Field(default_factory=GateSettings)
    knowledge: str = "knowledge"
    folder: Path = Field(default=Path("."), exclude=True)

    @field_validator("refusal", "greeting", "title")
    @classmethod
    def _join_folded_lines(cls, value: str) -> str:
        # YAML's folded style (>-) joins lines with a space; Chinese text must not get one.
        return _CJK_SPACE.sub("", value)

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError("must be lowercase letters, digits, '-' or '_', starting with a letter")
        return value

    @property
    def knowledge_dir(self) -> Path:
        return self.folder / self.knowledge


def load_domain(folder: Path) -> Domain:
    """Load and validate one domain folder; raise DomainError naming the file, field and fix."""
    path = Path(folder) / DOMAIN_FILE
    data = _read_yaml(path)
    data = {**data, "folder": Path(folder)}
    try:
        domain = Domain.model_validate(data)
    except ValidationError as exc:
        raise DomainError(path, _describe_validation_error(exc)) from exc
    if domain.id != Path(folder).name:
        raise DomainError(
            path,
            f"欄位 'id' 是 '{domain.id}'，但資料夾名稱是 '{Path(folder).name}'。"
            f"修正：把 id 改成 '{Path(folder).name}'，或把資料夾改名為 '{domain.id}'。",
        )
    return domain


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DomainError(path, f"找不到 {DOMAIN_FILE}。修正：在這個資料夾建立 {DOMAIN_FILE}（可複製 domains/mingqing/{DOMAIN_FILE} 修改）。")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DomainError(path, "檔案不是 UTF-8 文字。修正：以 UTF-8 編碼重新儲存這個 YAML 檔。") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DomainError(path, f"YAML 語法錯誤{_yaml_position(exc)}。修正：檢查該行的縮排、冒號與引號。") from exc
    if not isinstance(data, dict):
        raise DomainError(path, "最外層必須是鍵值對應（id:、title:…），不是清單或純文字。修正：參考 domains/mingqing/domain.yaml 的格式。")
    return data


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    problem = getattr(exc, "problem", "") or ""
    return f"（第 {mark.line + 1} 行第 {mark.column + 1} 欄：{problem}）"


def _describe_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's errors into one line per field, each with its fix."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(_describe_field_error(where, error))
    return "\n".join(lines)


def _describe_field_error(where: str, error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1, cutoff=0.6)
        if close:
            return f"欄位 '{where}' 不認得（未知的鍵）。修正：是不是要寫 '{close[0]}'？請改名或刪除它。"
        return f"欄位 '{where}' 不認得（未知的鍵）。修正：刪除它；這一層可用的欄位有：{', '.join(allowed)}。"
    if kind == "missing":
        return f"缺少必填欄位 '{where}'。修正：在 YAML 中加上 {where}:。"
    expected = error.get("msg", "")
    got = error.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return f"欄位 '{where}' 的值 {shown[:60]} 不正確：{expected}。修正：改成正確型別或範圍的值。"


def _allowed_keys(parent: tuple) -> list[str]:
    """Field names valid at this place in the YAML, for typo suggestions."""
    model = Domain
    for part in parent:
        field_info = model.model_fields.get(str(part))
        annotation = getattr(field_info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(name for name in model.model_fields if name != "folder")


@dataclass
class DomainLoadReport:
    """What loaded and what did not: one broken domain never hides the others."""

    loaded: dict[str, Domain] = field(default_factory=dict)
    failed: dict[str, DomainError] = field(default_factory=dict)


def load_all(root: Optional[Path] = None) -> DomainLoadReport:
    """Load every domain folder under root, collecting failures instead of stopping at the first."""
    root = Path(root) if root else default_domains_dir()
    report = DomainLoadReport()
    if not root.is_dir():
        return report
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            domain = load_domain(folder)
        except DomainError as exc:
            report.failed[folder.name] = exc
            continue
        report.loaded[domain.id] = domain
    return report


def get_domain(domain_id: str, root: Optional[Path] = None) -> Domain:
    """The loaded domain with this id, or an error that lists the ids that did load."""
    report = load_all(root)
    if domain_id in report.loaded:
        return report.loaded[domain_id]
    if domain_id in report.failed:
        raise report.failed[domain_id]
    known = ", ".join(sorted(report.loaded)) or "（沒有）"
    raise UnknownDomainError(
        f"找不到領域 '{domain_id}'。可用的領域：{known}。修正：用 `guardedchat domains` 查看清單，"
        f"或建立 domains/{domain_id}/domain.yaml。"
    )
