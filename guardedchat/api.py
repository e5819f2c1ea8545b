"""The OpenAI-compatible API: returns a FastAPI app (GET /v1/models, POST /v1/chat/completions) that
runs every request through the same guarded pipeline as the page, and `serve()` runs it with the page.

One model per domain, named `guardedchat-<domain id>`. A refusal is an ordinary assistant message
with finish_reason "content_filter"; every response also carries a `guardedchat` object (refused,
reason, sources, rails, gate). The domain decides the system prompt and the sampling: a client's
system messages and sampling parameters are ignored. Errors use OpenAI's error format.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .api_keys import ApiKey, ApiKeys
from .errors import BackendError, GuardedChatError, ModelLoadError
from .handoff import events_in_thread
from .pipeline import FinalEvent, RefusalEvent, TextEvent
from .service import UVICORN_OPTIONS, ChatService, RateLimiter, client_address

MODEL_PREFIX = "guardedchat-"
MAX_REQUEST_BYTES = 256_000  # a whole conversation; one message is further limited by the input rails
ROLES = ("system", "developer", "user", "assistant")
log = logging.getLogger("guardedchat.api")


class ApiError(Exception):
    """An error response in OpenAI's format."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def create_api(service: ChatService, keys: Optional[ApiKeys] = None) -> FastAPI:
    """The /v1 routes over the service's pipelines (shared with the page when served together)."""
    keys = keys if keys is not None else ApiKeys.from_env()
    limiter = RateLimiter(service.page.rate_limit_per_minute)
    key_limiters: dict[str, RateLimiter] = {}
    api = FastAPI(title="GuardedChat API", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # still OpenAI's format, never plain text
        log.exception("request failed")
        return ApiError(500, f"內部錯誤（{type(exc).__name__}）。修正：查看伺服器紀錄。", "server_error").response()

    closed = service.page.login_required and not keys  # a page behind a login never gets an open API

    @api.get("/v1/models")
    async def list_models(request: Request):
        _authenticate(request, keys, closed)
        return {"object": "list", "data": [_model_card(i) for i in sorted(service.domains)]}

    @api.get("/v1/models/{model}")
    async def get_model(model: str, request: Request):
        _authenticate(request, keys, closed)
        return _model_card(_domain_id(model, service))

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        key = _authenticate(request, keys, closed)
        _rate_limit(request, key, service, limiter, key_limiters)
        body = await _read_json(request)
        domain_id, history, message, stream, usage = _parse(body, service)
        access = key.access if key else service.page.access_for(None)
        pipeline = await run_in_threadpool(service.pipeline, domain_id)  # the first builds it: not on the loop
        if stream:
            chunks = _stream(pipeline, message, history, access, body["model"], usage)
            return StreamingResponse(chunks, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        record = await run_in_threadpool(_complete, pipeline, message, history, access)
        return _completion(record, body["model"], pipeline.domain.generation.max_tokens)

    return api


def _model_card(domain_id: str) -> dict:
    return {"id": MODEL_PREFIX + domain_id, "object": "model", "created": 0, "owned_by": "guardedchat"}


def _authenticate(request: Request, keys: ApiKeys, closed: bool = False) -> Optional[ApiKey]:
    if closed:
        raise ApiError(401, "這個部署的網頁需要登入，所以 API 需要金鑰，但沒有設定任何金鑰。修正：用 `guardedchat api-key "
                            "create --name 名稱 --file keys.yaml` 建立金鑰，並設定 GUARDEDCHAT_API_KEYS=keys.yaml。",
                       code="invalid_api_key")
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    key = keys.lookup(token) if token else None
    if key is None:
        raise ApiError(401, "API 金鑰無效或缺少。修正：在 Authorization 標頭送出 `Bearer <金鑰>`；金鑰由 "
                            "`guardedchat api-key create` 建立。", code="invalid_api_key")
    return key


def _rate_limit(request, key, service, limiter, key_limiters) -> None:
    if key is not None and key.rate_limit_per_minute:
        allowed = key_limiters.setdefault(key.name, RateLimiter(key.rate_limit_per_minute)).allow(key.name)
        limit = key.rate_limit_per_minute
    else:
        allowed = limiter.allow(client_address(request, service.page.trusted_proxies))
        limit = service.page.rate_limit_per_minute
    if not allowed:
        raise ApiError(429, f"請求太頻繁（每分鐘最多 {limit} 次）。修正：稍候再試。", "rate_limit_exceeded",
                       code="rate_limit_exceeded", headers={"Retry-After": "60"})


async def _read_json(request: Request) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise _too_large()
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_REQUEST_BYTES:
            raise _too_large()
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"請求內容不是合法的 JSON（{exc}）。修正：送出 UTF-8 的 JSON 物件。", code="invalid_json") from exc
    except RecursionError as exc:  # Python's parser gives up on about a thousand nested arrays or objects
        raise ApiError(400, "請求內容的 JSON 巢狀層數太深。修正：送出一般的對話請求（messages 陣列中的物件）。",
                       code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "請求內容必須是 JSON 物件。修正：例如 {\"model\": \"guardedchat-mingqing\", \"messages\": [...]}。",
                       code="invalid_json")
    return body


def _too_large() -> ApiError:
    return ApiError(413, f"請求太大（上限 {MAX_REQUEST_BYTES // 1000} KB）。修正：縮短訊息或對話紀錄。",
                    code="request_too_large")


def _domain_id(model, service: ChatService) -> str:
    domain_id = model[len(MODEL_PREFIX):] if isinstance(model, str) and model.startswith(MODEL_PREFIX) else None
    if domain_id not in service.domains:
        names = ", ".join(MODEL_PREFIX + i for i in sorted(service.domains))
        raise ApiError(404, f"沒有模型 {model!r}。修正：使用 {names} 之一（GET /v1/models 列出全部）。",
                       param="model", code="model_not_found")
    return domain_id


def _parse(body: dict, service: ChatService):
    """(domain id, history, last user message, stream?, include usage?) or ApiError saying what is wrong."""
    if "model" not in body:
        raise ApiError(400, "缺少 model。修正：例如 \"model\": \"guardedchat-mingqing\"。", param="model", code="missing_model")
    domain_id = _domain_id(body["model"], service)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages 必須是非空的陣列。修正：例如 [{\"role\": \"user\", \"content\": \"海瑞是誰？\"}]。",
                       param="messages")
    turns = [_turn(i, m) for i, m in enumerate(messages)]
    turns = [t for t in turns if t["role"] in ("user", "assistant")]  # the domain's system prompt is locked
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "最後一則訊息必須是 user。修正：把要問的問題放在 messages 的最後。", param="messages")
    if body.get("n", 1) != 1:
        raise ApiError(400, "只支援 n = 1。", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream 必須是 true 或 false。", param="stream")
    usage = bool((body.get("stream_options") or {}).get("include_usage")) if isinstance(body.get("stream_options"), dict) else False
    return domain_id, turns[:-1], turns[-1]["content"], stream, usage


def _turn(index: int, message) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} 必須是物件。", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(400, f"{where}.role 是 {role!r}，不支援。修正：使用 {', '.join(ROLES)} 之一。",
                       param=f"{where}.role", code="unsupported_role")
    return {"role": role, "content": _content(message.get("content"), where)}


def _content(content, where: str) -> str:
    if isinstance(content, str):
        return _unicode(content, where)
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return _unicode("".join(p["text"] for p in content), where)
    raise ApiError(400, f"{where}.content 必須是字串或文字區塊陣列（不支援圖片、音訊與工具呼叫）。",
                   param=f"{where}.content", code="unsupported_content")


def _unicode(text: str, where: str) -> str:
    """JSON's \\ud800 escapes parse to lone surrogates, which no model, engine or log can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"{where}.content 在第 {exc.start + 1} 個字元有單獨的 UTF-16 代理碼（例如 \\ud800），"
                            "不是合法的 Unicode 文字。修正：送出完整的字元（代理碼須成對）。",
                       param=f"{where}.content", code="invalid_text") from exc
    return text


def _complete(pipeline, message: str, history: list, access: str):
    record = None
    try:
        for event in pipeline.run(message, history, access=access):
            if isinstance(event, FinalEvent):
                record = event.record
    except GuardedChatError as exc:
        raise _engine_error(exc) from exc
    return record


def _engine_error(exc: GuardedChatError) -> ApiError:
    if isinstance(exc, (BackendError, ModelLoadError)):
        return ApiError(503 if isinstance(exc, ModelLoadError) else 502, str(exc), "server_error", code="engine_error")
    return ApiError(400, str(exc), code="invalid_input")


def _finish_reason(record, max_tokens: int) -> str:
    if record.refused:
        return "content_filter"
    if record.model_called and not record.stopped and record.tokens["completion"] >= max_tokens:
        return "length"
    return "stop"


def _extension(record) -> dict:
    return {"refused": record.refused, "reason": record.reason, "sources": record.sources, "rails": record.rails,
            "gate": record.gate, "model_called": record.model_called, "timings": record.timings}


def _usage(record) -> dict:
    prompt, completion = record.tokens["prompt"], record.tokens["completion"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(record, model: str, max_tokens: int) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": record.answer},
                                         "logprobs": None, "finish_reason": _finish_reason(record, max_tokens)}],
            "usage": _usage(record), "guardedchat": _extension(record)}


async def _stream(pipeline, message, history, access, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent chunks as the pipeline produces them; an engine failure becomes an error event."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    cancel = threading.Event()
    max_tokens = pipeline.domain.generation.max_tokens
    shown = False
    yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    try:
        async for event in events_in_thread(pipeline, message, history, access, cancel):
            if isinstance(event, (TextEvent, RefusalEvent)):
                # A stream cannot take back what it sent: a refusal after text arrives as more text.
                text = ("\n\n" if shown and isinstance(event, RefusalEvent) else "") + event.text
                shown = True
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
            elif isinstance(event, FinalEvent):
                record = event.record
                yield _sse({**base, "choices": [{"index": 0, "delta": {},
                                                          "finish_reason": _finish_reason(record, max_tokens)}],
                            "guardedchat": _extension(record)})
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(record)})
    except GuardedChatError as exc:
        yield _sse(_engine_error(exc).body())
    except Exception as exc:  # never leave a client hanging on a half-open stream
        log.exception("stream failed")
        yield _sse(ApiError(500, f"內部錯誤（{type(exc).__name__}）。修正：查看伺服器紀錄。", "server_error").body())
    finally:
        cancel.set()
    yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_server(service: Optional[ChatService] = None, keys: Optional[ApiKeys] = None) -> FastAPI:
    """The page and the API in one ASGI app: /v1/... is the API, everything else the page."""
    import gradio as gr

    from .ui import CSS, create_app, queued, server_options

    service = service or ChatService()
    api = create_api(service, keys)
    page = queued(create_app(service), service.page)
    return gr.mount_gradio_app(api, page, path="", css=CSS, **server_options(service.page))


def server_stack() -> dict:
    """uvicorn's HTTP parser and event loop: httptools and uvloop (C; dependencies of GuardedChat,
    uvloop except on Windows), else h11 and asyncio (pure Python). With llama.cpp in this process,
    the work of sending each piece competes with generation for the cores: in paired runs on 2
    cores (bench/server_stack_bench.py), API streaming read 86–96% of direct llama.cpp with h11 +
    asyncio and 95–100% with the C pair."""
    return {"http": "httptools" if _importable("httptools") else "h11",
            "loop": "uvloop" if _importable("uvloop") else "asyncio"}


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def serve(host: str, port: int, service: Optional[ChatService] = None) -> None:
    """Run the page and the API until interrupted (`guardedchat serve`)."""
    import uvicorn

    app = create_server(service)
    stack = server_stack()
    log.info("serving with HTTP parser %s, event loop %s", stack["http"], stack["loop"])
    print(f"GuardedChat：網頁 http://{host}:{port}/　API http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", **UVICORN_OPTIONS, **stack)
