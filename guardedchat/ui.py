"""The Gradio page: returns a Blocks app (create_app) that chats through the guarded pipeline.

create_app() builds the page and loads nothing expensive; launch() starts the server. The model,
gates and rails load on the first question.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import tempfile
import threading
from typing import Optional

import gradio as gr

from .errors import GuardedChatError
from .grounding import sources_line
from .handoff import events_in_thread
from .pipeline import FinalEvent, RefusalEvent, TextEvent
from .service import ChatService, RateLimiter, client_address, server_trusts_no_proxy  # noqa: F401 - re-exported
from .settings import PageSettings, load_settings

REFUSAL_TITLES = {
    "out_of_scope": "超出範圍", "unsafe_request": "不安全的要求", "reveal_instructions": "無法分享指示",
    "political_stance": "不表達政治立場", "too_long": "訊息太長", "empty": "空白訊息",
    "banned_words": "不適當的字詞", "system_prompt_leak": "無法分享指示", "answer_drift": "回答偏離範圍",
}

CSS = ".gc-panel {font-size: 0.9em}"

LABELS = {
    "zh-TW": {"domain": "領域", "chat": "對話", "question": "問題", "placeholder": "輸入問題後按 Enter", "send": "送出",
              "stop": "停止", "retry": "重試", "undo": "復原", "clear": "清除", "should_answer": "這題應該回答",
              "examples": "範例問題", "export_md": "匯出 Markdown", "export_json": "匯出 JSON", "download": "下載",
              "comment": "回饋意見（選填）", "comment_placeholder": "評分時一併送出"},
    "English": {"domain": "Domain", "chat": "Conversation", "question": "Question", "placeholder": "Type a question and press Enter",
                "send": "Send", "stop": "Stop", "retry": "Retry", "undo": "Undo", "clear": "Clear",
                "should_answer": "This should have been answered", "examples": "Example questions",
                "export_md": "Export Markdown", "export_json": "Export JSON", "download": "Download",
                "comment": "Comment (optional)", "comment_placeholder": "Sent with your rating"},
}

LIMIT_MESSAGES = {
    "too_long": "抱歉，訊息太長（這個網頁上限 {limit} 字）。請縮短問題後再試一次。",
    "too_many_turns": "這段對話已達 {limit} 輪上限。請按「清除」開始新的對話。",
    "rate_limited": "您的提問太頻繁了（每分鐘最多 {limit} 則）。請稍候再試。",
}


def _text(content) -> str:
    """Gradio 6 history content is a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    return "" if content is None else str(content)


REFUSAL_MARK = "🚫 "
ANSWER_KINDS = {"quoted": "引用資料原文（未呼叫模型）", "no_sources": "資料中沒有相關內容（未呼叫模型）",
                "abstained": "資料沒有回答這個問題，列出相關閱讀（未呼叫模型）",
                "no_documents": "這個領域還沒有資料文件（未呼叫模型）", "greeting": "問候（未呼叫模型）"}


def _refusal(title: str, text: str) -> str:
    """A refusal, styled apart from model text: a marked title and the reason as a quote."""
    return f"{REFUSAL_MARK}**{title}**\n\n> {text}"


def _is_refusal(content: str) -> bool:
    return content.startswith(REFUSAL_MARK)


def _plain_history(history: list) -> list[dict]:
    """Only answered turns go back to the model; refusals stay out (and so do their questions)."""
    plain = []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = _text(message.get("content") if isinstance(message, dict) else getattr(message, "content", None))
        if role in ("user", "assistant") and not _is_refusal(content):
            plain.append({"role": role, "content": content})
    return _drop_unanswered(plain)


def _drop_unanswered(messages: list[dict]) -> list[dict]:
    cleaned = []
    for message in messages:
        if message["role"] == "user" and cleaned and cleaned[-1]["role"] == "user":
            cleaned.pop()  # its answer was a refusal
        cleaned.append(message)
    if cleaned and cleaned[-1]["role"] == "user":
        cleaned.pop()
    return cleaned


def _panel(record, service: ChatService) -> str:
    info = None
    try:
        info = service.pipeline(record.domain).backend.info() if record.model_called else None
    except Exception:  # the panel must never break a turn
        info = None
    gate = record.gate or {}
    lines = [f"**閘門分數**：{gate.get('score') if gate.get('score') is not None else '—'}（{gate.get('decision') or '—'}）",
             f"**觸發的防護**：{', '.join(record.rails) or '無'}"]
    how = ANSWER_KINDS.get(record.reason)
    if how:
        lines.append(f"**回答方式**：{how}")
    if info is not None:
        lines += [f"**模型**：{html.escape(info.name)}（{info.quantization}，上下文 {info.n_ctx}，{info.accelerator}）",
                  f"**速度**：{record.timings.get('tokens_per_s', '—')} tokens/s"]
    return "\n\n".join(lines)


def create_app(service: Optional[ChatService] = None) -> gr.Blocks:
    """The page. Nothing slow happens here: the model loads on the first question."""
    service = service or ChatService()
    page = service.page
    ids = sorted(service.domains)
    first = service.domains[ids[0]]
    text = LABELS["zh-TW"]
    with gr.Blocks(title="GuardedChat", analytics_enabled=False) as app:
        turns = gr.State({})  # assistant message index → the turn the server recorded there
        with gr.Row():
            domain = gr.Dropdown(choices=[(service.domains[i].title, i) for i in ids], value=ids[0], label=text["domain"])
            language = gr.Radio(["zh-TW", "English"], value="zh-TW", label="介面語言 / Language")
        scope = gr.Markdown(_scope(first))
        with gr.Row():
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(value=_greeting(first), label=text["chat"], height=480, sanitize_html=True)
                message = gr.Textbox(label=text["question"], placeholder=text["placeholder"], max_lines=6)
                with gr.Row():
                    send = gr.Button(text["send"], variant="primary")
                    stop = gr.Button(text["stop"])
                    retry = gr.Button(text["retry"])
                    undo = gr.Button(text["undo"])
                    clear = gr.Button(text["clear"])
                    should_answer = gr.Button(text["should_answer"])
                comment = gr.Textbox(label=text["comment"], placeholder=text["comment_placeholder"], max_lines=3)
                examples = gr.Dataset(components=[message], samples=_samples(first), label=text["examples"])
                with gr.Row():
                    export_md = gr.Button(text["export_md"])
                    export_json = gr.Button(text["export_json"])
                download = gr.File(label=text["download"], interactive=False)
            with gr.Column(scale=1, elem_classes=["gc-panel"], visible=page.show_panel):
                panel = gr.Markdown("**閘門分數**：—\n\n**觸發的防護**：—")
                status = gr.Markdown("")

        async def respond(question, history, domain_id, turns=None, request: gr.Request = None):
            history = list(history or [])
            turns = _turns_within(turns, len(history))
            question = str(question or "")
            history.append({"role": "user", "content": question})
            refused = _page_limits(service, question, history, request)
            if refused:
                history.append({"role": "assistant", "content": _refusal("網頁限制", refused)})
                yield history, gr.update(), turns
                return
            history.append({"role": "assistant", "content": ""})
            user = getattr(request, "username", None) if request is not None else None
            cancel = threading.Event()
            # The first turn of a domain builds its pipeline (and may unpack the model): not on the loop.
            pipeline = await asyncio.to_thread(service.pipeline, domain_id)
            events = events_in_thread(pipeline, question, _plain_history(history[:-2]),
                                      service.page.access_for(user), cancel)
            try:
                async for event in events:
                    if isinstance(event, TextEvent):
                        history[-1] = {"role": "assistant", "content": _text(history[-1]["content"]) + event.text}
                        yield history, gr.update(), gr.skip()
                    elif isinstance(event, RefusalEvent):
                        history[-1] = {"role": "assistant",
                                       "content": _refusal(REFUSAL_TITLES.get(event.reason, "已拒絕"), event.text)}
                        yield history, gr.update(), gr.skip()
                    elif isinstance(event, FinalEvent):
                        if event.record.sources and not event.record.refused:
                            history[-1] = {"role": "assistant", "content": _text(history[-1]["content"])
                                           + "\n\n" + sources_line(event.record.sources)}
                        turns[len(history) - 1] = {"domain": domain_id, "question": question,
                                                   "record": event.record.to_json()}
                        yield history, _panel(event.record, service), turns
            except GuardedChatError as exc:  # the engine died or the model failed: say so, keep the page alive
                history[-1] = {"role": "assistant", "content": _refusal("發生錯誤", str(exc))}
                yield history, gr.update(), turns
            finally:
                cancel.set()  # Stop cancels this generator; the turn's thread then stops llama.cpp

        def clear_box():
            return ""

        def switch(domain_id):
            chosen = service.domains[domain_id]
            return _greeting(chosen), _scope(chosen), gr.update(samples=_samples(chosen)), {}

        def undo_last(history, turns=None):
            history = list(history or [])
            while history and _role(history[-1]) == "assistant":
                history.pop()
            if history:
                history.pop()
            return history, _turns_within(turns, len(history))

        async def retry_last(history, domain_id, turns=None, request: gr.Request = None):
            history = list(history or [])
            question = ""
            while history:
                item = history.pop()
                if _role(item) == "user":
                    question = _text(item.get("content"))
                    break
            if not question:
                yield history, gr.update(), _turns_within(turns, len(history))
                return
            async for update in respond(question, history, domain_id, turns, request):
                yield update

        def rate(data: gr.LikeData, turns, note):
            index = data.index if isinstance(data.index, int) else data.index[0]
            return _store(service, turns, index, "up" if data.liked else "down", note), ""

        def mark_should_answer(history, turns, note):
            return _store(service, turns, len(history or []) - 1, "should_answer", note), ""

        def relabel(choice):
            labels = LABELS[choice]
            return (gr.update(label=labels["domain"]), gr.update(label=labels["chat"]),
                    gr.update(label=labels["question"], placeholder=labels["placeholder"]),
                    *[gr.update(value=labels[key]) for key in ("send", "stop", "retry", "undo", "clear",
                                                               "should_answer", "export_md", "export_json")],
                    gr.update(label=labels["examples"]), gr.update(label=labels["download"]),
                    gr.update(label=labels["comment"], placeholder=labels["comment_placeholder"]))

        submitted = gr.on([message.submit, send.click], respond, [message, chatbot, domain, turns], [chatbot, panel, turns])
        gr.on([message.submit, send.click], clear_box, None, message)
        stop.click(None, None, None, cancels=[submitted])
        retry.click(retry_last, [chatbot, domain, turns], [chatbot, panel, turns])
        undo.click(undo_last, [chatbot, turns], [chatbot, turns])
        clear.click(lambda d: (_greeting(service.domains[d]), {}), domain, [chatbot, turns])
        domain.change(switch, domain, [chatbot, scope, examples, turns])
        examples.click(lambda sample: sample[0], examples, message)
        chatbot.like(rate, [turns, comment], [status, comment])
        should_answer.click(mark_should_answer, [chatbot, turns, comment], [status, comment])
        export_md.click(lambda h, d: _export(h, d, "md"), [chatbot, domain], download, api_name="export_markdown")
        export_json.click(lambda h, d: _export(h, d, "json"), [chatbot, domain], download, api_name="export_json")
        language.change(relabel, language, [domain, chatbot, message, send, stop, retry, undo, clear, should_answer,
                                            export_md, export_json, examples, download, comment])
    return app


def _role(message) -> Optional[str]:
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


def _page_limits(service: ChatService, question: str, history: list, request) -> Optional[str]:
    """The page's own limits (showcase profile): message length, turns, messages per minute."""
    page = service.page
    if len(question) > page.max_message_chars:
        return LIMIT_MESSAGES["too_long"].format(limit=page.max_message_chars)
    turns = sum(1 for m in history if _role(m) == "user")
    if page.max_turns and turns > page.max_turns:
        return LIMIT_MESSAGES["too_many_turns"].format(limit=page.max_turns)
    if not service.limiter.allow(client_address(request, page.trusted_proxies)):
        return LIMIT_MESSAGES["rate_limited"].format(limit=page.rate_limit_per_minute)
    return None


def _export(history, domain_id: str, kind: str) -> str:
    """The conversation as a Markdown or JSON file for download."""
    messages = []
    for m in history or []:
        content = _text(m.get("content") if isinstance(m, dict) else m.content)
        messages.append({"role": _role(m), "content": content, "refusal": _is_refusal(content)})
    folder = tempfile.mkdtemp(prefix="guardedchat-export-")
    if kind == "json":
        path = os.path.join(folder, "conversation.json")
        body = json.dumps({"domain": domain_id, "messages": messages}, ensure_ascii=False, indent=2)
    else:
        path = os.path.join(folder, "conversation.md")
        names = {"user": "你", "assistant": "助理"}
        body = f"# GuardedChat 對話（{domain_id}）\n\n" + "\n\n".join(
            f"**{names.get(m['role'], m['role'])}**{'（拒絕）' if m['refusal'] else ''}：{m['content']}" for m in messages)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(body + "\n")
    return path


# What a rating keeps of the conversation before its turn: the newest messages, this many characters.
MAX_RATED_CONTEXT_CHARS = 20_000


def _conversation(turns: dict, index: int) -> list[dict]:
    """The conversation up to the rated turn as the server recorded it (answered turns, then this one):
    nothing a client resends, and no more than MAX_RATED_CONTEXT_CHARS of it."""
    messages: list[dict] = []
    for at in sorted(i for i in turns if i < index and not turns[i]["record"].get("refused")) + [index]:
        messages += [{"role": "user", "content": turns[at]["question"]},
                     {"role": "assistant", "content": turns[at]["record"]["answer"]}]
    while len(messages) > 2 and sum(len(m["content"]) for m in messages) > MAX_RATED_CONTEXT_CHARS:
        del messages[:2]
    return messages


def _turns_within(turns, length: int) -> dict:
    """The recorded turns whose messages are still in a history of `length` messages."""
    return {index: turn for index, turn in (turns or {}).items() if index < length}


def _store(service: ChatService, turns, index: int, rating: str, note: str = "") -> str:
    turn = (turns or {}).get(index)
    if turn is None:
        return "（這則訊息沒有可評分的回答）" if turns else "（還沒有可評分的回答）"
    if rating == "should_answer" and not turn["record"].get("refused"):
        return "這一題沒有被拒絕，不需要標記。"
    try:
        _add_feedback(service, turn, _conversation(turns, index), rating, note)
    except GuardedChatError as exc:
        return f"⚠️ {exc}"
    return "已記錄您的回饋，謝謝！"


def _add_feedback(service: ChatService, turn: dict, messages: list[dict], rating: str, note: str) -> None:
    record = turn["record"]
    service.feedback.add(domain=turn["domain"], rating=rating, question=turn["question"], answer=record["answer"],
                         comment=note or "", model=record.get("model"), messages=messages,
                         sources=record.get("sources") or [], gate_score=(record.get("gate") or {}).get("score"),
                         rails=record.get("rails") or [], refused=bool(record.get("refused")))


def _greeting(domain) -> list[dict]:
    return [{"role": "assistant", "content": domain.greeting}]


def _scope(domain) -> str:
    return f"### {domain.title}\n\n**範圍**：{domain.description.in_scope}\n\n**不回答**：{domain.description.out_of_scope}"


def _samples(domain) -> list[list[str]]:
    return [[question] for question in domain.examples.in_scope[:8]]


def server_options(page: PageSettings) -> dict:
    """The Gradio server options a deployment profile asks for (login, and a showcase's lockdown)."""
    options: dict = {}
    if page.users:
        options["auth"] = list(page.users.items())
    if page.profile in ("showcase", "lab"):
        # Gradio's run history keeps every answer in the browser's localStorage, past a logout.
        options["run_history"] = False
    if page.profile == "showcase":
        # Strangers use it: no monitoring dashboard, no run history or API page links, no uploads.
        options.update(enable_monitoring=False, footer_links=["gradio"], max_file_size="1kb")
    return options


# Gradio's queue looks for work every 1 ms, busy or idle: 8% of a core here, which llama.cpp on the
# same cores loses. Every 30 ms the whole server idles at about 1.3%, and a refusal on the page took
# 93 ms against Gradio's 91 ms; at 50 ms it took 131 ms (bench/page_bench.py --queue-poll compares).
QUEUE_POLL_SECONDS = 0.03
PROGRESS_POLL_SECONDS = 0.03


def queued(app: gr.Blocks, page: PageSettings) -> gr.Blocks:
    app = app.queue(default_concurrency_limit=int(os.environ.get("GUARDEDCHAT_CONCURRENCY", "1")),
                    max_size=page.queue_size)
    queue = getattr(app, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):  # private in Gradio 6; a later one may differ
        queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_SECONDS)
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_POLL_SECONDS)
    return app


def launch(app: Optional[gr.Blocks] = None, service: Optional[ChatService] = None, **kwargs):
    """Start the server with the deployment profile's queue, login and browser settings.
    GRADIO_SERVER_NAME and GRADIO_SERVER_PORT are honoured by Gradio itself."""
    service = service or (None if app is not None else ChatService())
    page = service.page if service is not None else load_settings()
    app = queued(app or create_app(service), page)
    for name, value in server_options(page).items():
        kwargs.setdefault(name, value)
    kwargs.setdefault("inbrowser", page.open_browser)
    with server_trusts_no_proxy():
        return app.launch(css=CSS, **kwargs)
