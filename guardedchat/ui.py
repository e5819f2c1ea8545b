"""The Gradio page: returns a Blocks app (create_app) that chats through the guarded pipeline.

create_app() builds the page and loads nothing expensive; launch() starts the server. The model,
gates and rails load on the first question.
"""

from __future__ import annotations

import html
import os
import threading
from typing import Optional

import gradio as gr

from .domains import load_all
from .feedback import FeedbackStore
from .pipeline import FinalEvent, RefusalEvent, TextEvent
from .runtime import BackendSettings, build_pipeline, get_backend

REFUSAL_TITLES = {
    "out_of_scope": "超出範圍", "unsafe_request": "不安全的要求", "reveal_instructions": "無法分享指示",
    "political_stance": "不表達政治立場", "too_long": "訊息太長", "empty": "空白訊息",
    "banned_words": "不適當的字詞", "system_prompt_leak": "無法分享指示", "answer_drift": "回答偏離範圍",
}

CSS = ".gc-panel {font-size: 0.9em}"


class ChatService:
    """What the page needs from the rest of GuardedChat: pipelines per domain and the feedback store."""

    def __init__(self, settings: Optional[BackendSettings] = None, feedback: Optional[FeedbackStore] = None):
        self.settings = settings or BackendSettings.from_env()
        report = load_all()
        self.domains = report.loaded
        self.failed = report.failed
        self._pipelines: dict = {}
        self._lock = threading.Lock()
        self._feedback = feedback

    @property
    def feedback(self) -> FeedbackStore:
        if self._feedback is None:
            self._feedback = FeedbackStore()
        return self._feedback

    def pipeline(self, domain_id: str):
        with self._lock:
            if domain_id not in self._pipelines:
                backend = get_backend(self.settings)
                self._pipelines[domain_id] = build_pipeline(self.domains[domain_id], backend)
            return self._pipelines[domain_id]


def _text(content) -> str:
    """Gradio 6 history content is a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    return "" if content is None else str(content)


def _plain_history(history: list) -> list[dict]:
    """Only answered turns go back to the model; refusals and greetings carry metadata and stay out."""
    plain = []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        metadata = (message.get("metadata") if isinstance(message, dict) else getattr(message, "metadata", None)) or {}
        if role in ("user", "assistant") and not metadata.get("title"):
            plain.append({"role": role, "content": _text(content)})
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
    if info is not None:
        lines += [f"**模型**：{html.escape(info.name)}（{info.quantization}，上下文 {info.n_ctx}，{info.accelerator}）",
                  f"**速度**：{record.timings.get('tokens_per_s', '—')} tokens/s"]
    return "\n\n".join(lines)


def create_app(service: Optional[ChatService] = None) -> gr.Blocks:
    """The page. Nothing slow happens here: the model loads on the first question."""
    service = service or ChatService()
    ids = sorted(service.domains)
    first = service.domains[ids[0]]
    with gr.Blocks(title="GuardedChat") as app:
        last = gr.State({})
        with gr.Row():
            domain = gr.Dropdown(choices=[(service.domains[i].title, i) for i in ids], value=ids[0], label="領域")
        scope = gr.Markdown(_scope(first))
        with gr.Row():
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(value=_greeting(first), label="對話", height=480, sanitize_html=True)
                message = gr.Textbox(label="問題", placeholder="輸入問題後按 Enter", max_lines=6)
                with gr.Row():
                    send = gr.Button("送出", variant="primary")
                    stop = gr.Button("停止")
                    retry = gr.Button("重試")
                    undo = gr.Button("復原")
                    clear = gr.Button("清除")
                    should_answer = gr.Button("這題應該回答")
                examples = gr.Dataset(components=[message], samples=_samples(first), label="範例問題")
            with gr.Column(scale=1, elem_classes=["gc-panel"]):
                panel = gr.Markdown("**閘門分數**：—\n\n**觸發的防護**：—")
                status = gr.Markdown("")

        def respond(text, history, domain_id):
            history = list(history or [])
            text = str(text or "")
            history.append({"role": "user", "content": text})
            history.append({"role": "assistant", "content": ""})
            events = service.pipeline(domain_id).run(text, _plain_history(history[:-2]))
            try:
                for event in events:
                    if isinstance(event, TextEvent):
                        history[-1] = {"role": "assistant", "content": _text(history[-1]["content"]) + event.text}
                        yield history, gr.update(), {}
                    elif isinstance(event, RefusalEvent):
                        title = "🚫 " + REFUSAL_TITLES.get(event.reason, "已拒絕")
                        history[-1] = {"role": "assistant", "content": event.text, "metadata": {"title": title, "status": "done"}}
                        yield history, gr.update(), {}
                    elif isinstance(event, FinalEvent):
                        record = event.record
                        yield history, _panel(record, service), {"domain": domain_id, "question": text,
                                                                 "record": record.to_json()}
            finally:
                events.close()  # Stop closes this generator; closing the pipeline stops llama.cpp

        def clear_box():
            return ""

        def switch(domain_id):
            chosen = service.domains[domain_id]
            return _greeting(chosen), _scope(chosen), gr.update(samples=_samples(chosen)), {}

        def undo_last(history):
            history = list(history or [])
            while history and (history[-1].get("role") if isinstance(history[-1], dict) else None) == "assistant":
                history.pop()
            if history:
                history.pop()
            return history

        def retry_last(history, domain_id):
            history = list(history or [])
            question = ""
            while history:
                item = history.pop()
                if isinstance(item, dict) and item.get("role") == "user":
                    question = _text(item.get("content"))
                    break
            if not question:
                yield history, gr.update(), {}
                return
            yield from respond(question, history, domain_id)

        def rate(data: gr.LikeData, history, state):
            rating = "up" if data.liked else "down"
            return _store(service, state, rating, history)

        def mark_should_answer(history, state):
            return _store(service, state, "should_answer", history)

        submitted = gr.on([message.submit, send.click], respond, [message, chatbot, domain], [chatbot, panel, last])
        gr.on([message.submit, send.click], clear_box, None, message)
        stop.click(None, None, None, cancels=[submitted])
        retry.click(retry_last, [chatbot, domain], [chatbot, panel, last])
        undo.click(undo_last, chatbot, chatbot)
        clear.click(lambda d: (_greeting(service.domains[d]), {}), domain, [chatbot, last])
        domain.change(switch, domain, [chatbot, scope, examples, last])
        examples.click(lambda sample: sample[0], examples, message)
        chatbot.like(rate, [chatbot, last], status)
        should_answer.click(mark_should_answer, [chatbot, last], status)
    return app


def _store(service: ChatService, state: dict, rating: str, history) -> str:
    if not state:
        return "（還沒有可評分的回答）"
    record = state["record"]
    if rating == "should_answer" and not record.get("refused"):
        return "這一題沒有被拒絕，不需要標記。"
    service.feedback.add(domain=state["domain"], rating=rating, question=state["question"], answer=record["answer"],
                         model=record.get("model"), messages=_plain_history(history),
                         gate_score=(record.get("gate") or {}).get("score"), rails=record.get("rails") or [],
                         refused=bool(record.get("refused")))
    return "已記錄您的回饋，謝謝！"


def _greeting(domain) -> list[dict]:
    return [{"role": "assistant", "content": domain.greeting}]


def _scope(domain) -> str:
    return f"### {domain.title}\n\n**範圍**：{domain.description.in_scope}\n\n**不回答**：{domain.description.out_of_scope}"


def _samples(domain) -> list[list[str]]:
    return [[question] for question in domain.examples.in_scope[:8]]


def launch(app: Optional[gr.Blocks] = None, **kwargs):
    """Start the server; GRADIO_SERVER_NAME and GRADIO_SERVER_PORT are honoured by Gradio itself."""
    app = app or create_app()
    app.queue(default_concurrency_limit=int(os.environ.get("GUARDEDCHAT_CONCURRENCY", "1")))
    return app.launch(css=CSS, **kwargs)
