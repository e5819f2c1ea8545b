"""Model backends: returns streams of text pieces for a prompt, behind one small interface."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Protocol, Union

from .errors import BackendError, ModelLoadError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ChatPrompt:
    """Messages for a model that has a chat template."""

    messages: list[dict]


@dataclass(frozen=True)
class CompletionPrompt:
    """Plain text for a base model without a chat template, ending where the answer begins."""

    text: str
    stop: list[str] = field(default_factory=list)


Prompt = Union[ChatPrompt, CompletionPrompt]


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int = 200
    temperature: float = 0.3
    top_p: float = 0.9
    repeat_penalty: float = 1.15


@dataclass(frozen=True)
class ModelInfo:
    """What the page's side panel and the audit log show about the model."""

    name: str
    file: str
    quantization: str
    n_ctx: int
    accelerator: str
    has_chat_template: bool


class ChatBackend(Protocol):
    """Anything that streams text for a prompt. Closing the stream stops generation."""

    def info(self) -> ModelInfo: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt: Prompt, settings: SamplingSettings,
               cancel: Optional[threading.Event] = None) -> Iterator[str]: ...


def check_gguf_file(path: Path, fix: str) -> None:
    """Fail early, with the fix, on a missing, empty or non-GGUF file (llama.cpp's own errors are opaque)."""
    if not path.exists():
        raise ModelLoadError(f"找不到模型檔 {path}。修正：{fix}")
    if not path.is_file():
        raise ModelLoadError(f"{path} 不是檔案。修正：{fix}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} 不是 GGUF 模型檔（開頭不是 'GGUF'，可能已損毀或下載不完整）。修正：{fix}")


def detect_accelerator(n_gpu_layers: int) -> str:
    """CPU unless layers are offloaded and llama.cpp was built with a GPU backend."""
    if n_gpu_layers == 0:
        return "CPU"
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return "CPU"
    except (ImportError, AttributeError):
        return "CPU"
    return "Metal" if os.uname().sysname == "Darwin" else "CUDA"


class LlamaCppBackend:
    """llama.cpp in process: one model, one lock held for a whole stream (a Llama is not thread-safe)."""

    def __init__(self, model_path: Path, name: str = "", fix: str = "", n_ctx: int = 2048,
                 n_threads: Optional[int] = None, n_gpu_layers: int = 0, seed: int = 42,
                 chat_format: Optional[str] = None, on_load=None):
        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        self.fix = fix or "重新下載模型檔，或用 `guardedchat models` 查看可用的模型。"
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        self.chat_format = chat_format
        self.on_load = on_load
        self._llm = None
        self._lock = threading.Lock()

    def _model(self):
        # Loading takes seconds and hundreds of MB: do it once, on first use.
        if self._llm is None:
            with self._lock:
                if self._llm is None:
                    self._llm = self._load()
        return self._llm

    def _load(self):
        check_gguf_file(self.model_path, self.fix)
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelLoadError("llama-cpp-python 沒有安裝。修正：執行 `make install`。") from exc
        if self.on_load:
            self.on_load(self)
        _silence_llama_log()
        try:
            # llama-cpp-python's own default is half the cores; --threads says "default: all".
            threads = self.n_threads or os.cpu_count() or 1
            return Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_gpu_layers=self.n_gpu_layers, seed=self.seed, chat_format=self.chat_format,
                         verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp 無法載入 {self.model_path}（檔案可能被截斷或損毀：{exc}）。修正：{self.fix}"
            ) from exc

    @property
    def has_chat_template(self) -> bool:
        if self.chat_format:
            return True
        return bool(self._model().metadata.get("tokenizer.chat_template"))

    def info(self) -> ModelInfo:
        llm = self._model()
        return ModelInfo(
            name=self.name,
            file=str(self.model_path),
            quantization=_quantization(llm.metadata, self.model_path),
            n_ctx=llm.n_ctx(),
            accelerator=detect_accelerator(self.n_gpu_layers),
            has_chat_template=self.has_chat_template,
        )

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8", "replace"), add_bos=False, special=True))

    def stream(self, prompt: Prompt, settings: SamplingSettings,
               cancel: Optional[threading.Event] = None) -> Iterator[str]:
        llm = self._model()
        with self._lock:
            chunks = self._start(llm, prompt, settings)
            try:
                for chunk in chunks:
                    if cancel is not None and cancel.is_set():
                        break
                    text = _chunk_text(chunk)
                    if text:
                        yield text
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"llama.cpp 產生回答時失敗：{exc}。修正：縮短問題或對話後重試。") from exc
            finally:
                chunks.close()  # stops llama.cpp mid-generation when the reader went away

    def _start(self, llm, prompt: Prompt, settings: SamplingSettings):
        common = dict(max_tokens=settings.max_tokens, temperature=settings.temperature,
                      top_p=settings.top_p, repeat_penalty=settings.repeat_penalty, stream=True)
        if isinstance(prompt, ChatPrompt):
            return llm.create_chat_completion(messages=prompt.messages, **common)
        return llm.create_completion(prompt=prompt.text, stop=prompt.stop or None, **common)


_log_callback = None


def _silence_llama_log() -> None:
    """Send llama.cpp's own log lines to Python logging (DEBUG), not to the user's terminal.

    verbose=False still lets some warnings through (the SWA cache notice), which would mix into
    the CLI's output; GUARDEDCHAT_DEBUG=1 prints them again.
    """
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes
    import logging

    import llama_cpp

    log = logging.getLogger("guardedchat.llama_cpp")
    show = bool(os.environ.get("GUARDEDCHAT_DEBUG"))

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        message = text.decode("utf-8", "replace")
        if show:
            sys.stderr.write(message)
        log.debug(message.rstrip())

    _log_callback = callback  # keep a reference: ctypes would free it and llama.cpp would crash
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _chunk_text(chunk: dict) -> str:
    choice = chunk["choices"][0]
    if "text" in choice:
        return choice["text"] or ""
    return (choice.get("delta") or {}).get("content") or ""


_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
               17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


def _quantization(metadata: dict, path: Path) -> str:
    file_type = metadata.get("general.file_type")
    if file_type is not None and str(file_type).isdigit():
        return _FILE_TYPES.get(int(file_type), f"type {file_type}")
    upper = path.name.upper()
    for name in sorted(_FILE_TYPES.values(), key=len, reverse=True):
        if name in upper:
            return name
    return "unknown"
