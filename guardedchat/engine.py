"""A remote serving engine as a backend: returns streams of text from any OpenAI-compatible server
(llama.cpp's server, vLLM, Ollama), with timeouts, retries with backoff, and clear errors.

Chat prompts go to /v1/chat/completions. A base model without a chat template (the default) gets our
own few-shot completion prompt through /v1/completions: a server's chat endpoint would wrap it in a
template the model never saw (llama-cpp-python falls back to llama-2 markup, and the answers are noise).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import httpx

from .backend import ChatPrompt, CompletionPrompt, ModelInfo, Prompt, SamplingSettings
from .errors import BackendError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class EngineSettings:
    base_url: str                      # e.g. http://127.0.0.1:8080/v1; several, comma-separated, share the load
    model: str = "default"             # the engine's model name
    api_key: Optional[str] = None
    chat_template: bool = False        # False: send our completion prompt to /completions
    n_ctx: int = 2048
    connect_timeout: float = 5.0
    read_timeout: float = 60.0         # the longest wait for the next piece of a stream
    retries: int = 2                   # attempts after the first, only before any text has arrived
    backoff: float = 0.5               # seconds, doubled after each failed attempt


class OpenAICompatBackend:
    """Streams from an OpenAI-compatible endpoint; the rest of the pipeline does not know the difference.
    With several engines, each request goes to the one with the fewest requests in flight."""

    def __init__(self, settings: EngineSettings, transport: Optional[httpx.BaseTransport] = None):
        self.settings = settings
        self.name = settings.model
        self.urls = [url.strip().rstrip("/") for url in settings.base_url.split(",") if url.strip()]
        if not self.urls:
            raise BackendError("沒有設定推論伺服器的網址。修正：GUARDEDCHAT_ENGINE_URL=http://主機:埠/v1。")
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
        self._clients = [httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)
                         for url in self.urls]
        self._in_flight = [0] * len(self.urls)
        self._lock = threading.Lock()

    def info(self) -> ModelInfo:
        return ModelInfo(self.settings.model, self.settings.base_url, "remote", self.settings.n_ctx,
                         "OpenAI-compatible server", self.settings.chat_template)

    def count_tokens(self, text: str) -> int:
        # No tokenizer here: one token per character over-counts (Chinese is about one, English about
        # a quarter), so prompts fit the context with room to spare.
        return len(text)

    def stream(self, prompt: Prompt, settings: SamplingSettings,
               cancel: Optional[threading.Event] = None) -> Iterator[str]:
        path, body = self._request(prompt, settings)
        chosen, response = self._open(path, body)
        try:
            for piece in _pieces(response, self.urls[chosen] + path):
                if cancel is not None and cancel.is_set():
                    return
                if piece:
                    yield piece
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise BackendError(f"推論伺服器 {self.urls[chosen]} 在回答途中中斷（{type(exc).__name__}）。"
                               "修正：確認伺服器仍在執行，再問一次。") from exc
        finally:
            response.close()  # closing the connection makes the engine stop generating
            with self._lock:
                self._in_flight[chosen] -= 1

    def _request(self, prompt: Prompt, settings: SamplingSettings) -> tuple[str, dict]:
        body = {"model": self.settings.model, "stream": True, "max_tokens": settings.max_tokens,
                "temperature": settings.temperature, "top_p": settings.top_p}
        if isinstance(prompt, ChatPrompt):
            return "/chat/completions", {**body, "messages": prompt.messages}
        if isinstance(prompt, CompletionPrompt):
            return "/completions", {**body, "prompt": prompt.text, "stop": prompt.stop[:4]}
        raise BackendError(f"不支援的提示類型 {type(prompt).__name__}。")

    def _open(self, path: str, body: dict) -> tuple[int, httpx.Response]:
        """(engine index, streaming response), retried with backoff (on the next engine, when there
        are several) while engines are unreachable or busy. The caller owns the in-flight count."""
        delay = self.settings.backoff
        tried: set[int] = set()
        for attempt in range(self.settings.retries + 1):
            last = attempt == self.settings.retries
            chosen = self._pick(tried)
            try:
                client = self._clients[chosen]
                response = client.send(client.build_request("POST", path, json=body), stream=True)
            except httpx.TransportError as exc:
                self._release(chosen)
                tried.add(chosen)
                if last:
                    raise BackendError(_unreachable(self.urls[chosen], exc)) from exc
            else:
                if response.status_code == 200:
                    return chosen, response
                self._release(chosen)
                tried.add(chosen)
                detail = _error_detail(response)
                if response.status_code not in RETRYABLE_STATUS or last:
                    raise BackendError(f"推論伺服器 {self.urls[chosen]} 回應 HTTP {response.status_code}：{detail}。"
                                       "修正：確認 GUARDEDCHAT_ENGINE_URL 與 GUARDEDCHAT_ENGINE_MODEL 的設定。")
            if len(tried) < len(self.urls):
                continue  # another engine may be up: no need to wait
            time.sleep(delay)
            delay *= 2
            tried.clear()
        raise AssertionError("unreachable")

    def _pick(self, avoid: set[int]) -> int:
        with self._lock:
            candidates = [i for i in range(len(self.urls)) if i not in avoid] or list(range(len(self.urls)))
            chosen = min(candidates, key=lambda i: self._in_flight[i])
            self._in_flight[chosen] += 1
            return chosen

    def _release(self, chosen: int) -> None:
        with self._lock:
            self._in_flight[chosen] -= 1

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _unreachable(url: str, exc: Exception) -> str:
    kind = "逾時" if isinstance(exc, httpx.TimeoutException) else "連不上"
    return (f"推論伺服器 {url} {kind}（{type(exc).__name__}）。修正：啟動伺服器（例如 python -m llama_cpp.server "
            "--model 模型.gguf --port 8080），或把 GUARDEDCHAT_ENGINE_URL 改成正確的位址。")


def _error_detail(response: httpx.Response) -> str:
    try:
        text = response.read().decode("utf-8", "replace")
    finally:
        response.close()
    try:
        return str(json.loads(text)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return text[:300] or response.reason_phrase


def _pieces(response: httpx.Response, url: str) -> Iterator[str]:
    """The text of each server-sent event until [DONE]; anything that is not an OpenAI chunk is an error,
    and so is a stream that ends without [DONE] (the engine died or was cut off)."""
    for line in response.iter_lines():
        if not line or line.startswith((":", "event:", "id:", "retry:")):
            continue  # blank lines, comments (": ping") and other SSE fields
        if not line.startswith("data:"):
            raise BackendError(_not_openai(url, line))
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield _chunk_text(data, url)
    raise BackendError(f"推論伺服器 {url} 在回答途中中斷（串流沒有正常結束）。修正：確認伺服器仍在執行，再問一次。")


def _not_openai(url: str, data: str) -> str:
    return f"推論伺服器 {url} 的回應不是 OpenAI 格式（{data[:80]!r}）。修正：確認網址指向 OpenAI 相容的 /v1 端點。"


def _chunk_text(data: str, url: str) -> str:
    try:
        chunk = json.loads(data)
        if "error" in chunk:
            raise BackendError(f"推論伺服器 {url} 回報錯誤：{chunk['error']}。修正：查看伺服器的紀錄。")
        choice = chunk["choices"][0] if chunk["choices"] else {}
        text = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BackendError(_not_openai(url, data)) from exc
    return text or ""
