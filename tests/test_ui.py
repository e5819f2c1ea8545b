"""The page, launched for real and driven by gradio_client: chat, refusal, domain switch, feedback."""

import socket

import pytest
from gradio_client import Client

from guardedchat.feedback import FeedbackStore
from guardedchat.ui import ChatService, create_app, launch

pytestmark = pytest.mark.model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    store = FeedbackStore(tmp_path_factory.mktemp("ui") / "feedback.sqlite3")
    port = _free_port()
    app = create_app(ChatService(feedback=store))
    launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", store
    app.close()


def texts(history):
    return [(m["role"], "".join(part["text"] for part in m["content"]), (m.get("metadata") or {}).get("title"))
            for m in history]


def test_in_scope_question_streams_an_answer(page):
    url, _ = page
    history, panel = Client(url, verbose=False).predict("鄭成功如何取得台灣？", [], "mingqing", api_name="/respond")
    (user, question, _), (assistant, answer, title) = texts(history)
    assert (user, question, assistant, title) == ("user", "鄭成功如何取得台灣？", "assistant", None)
    assert answer.strip()
    assert "**閘門分數**" in panel and "**模型**：gemma3-270m（Q4_K_M，上下文 2048，CPU）" in panel


def test_refusal_is_styled_apart_and_names_the_rail(page):
    url, _ = page
    history, panel = Client(url, verbose=False).predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
    assert texts(history)[1][2] == "🚫 超出範圍"
    assert panel.endswith("**觸發的防護**：domain gate")


@pytest.mark.parametrize("message", ["", "長" * 100_000, "\x00\x1b[31m控制字元", "<script>alert(1)</script><b>粗體</b>"])
def test_bad_input_gets_a_message_not_an_error(page, message):
    url, _ = page
    history, _ = Client(url, verbose=False).predict(message, [], "mingqing", api_name="/respond")
    assert texts(history)[-1][0] == "assistant" and texts(history)[-1][1]


def test_domain_switch_starts_a_new_conversation(page):
    url, _ = page
    greeting, scope, examples = Client(url, verbose=False).predict("riscv", api_name="/switch")[:3]
    assert texts(greeting)[0][1].startswith("您好，我是 RISC-V 知識小助手")
    assert scope.startswith("### RISC-V 知識小助手")


def test_should_have_been_answered_is_stored(page):
    url, store = page
    client = Client(url, verbose=False)
    history, _ = client.predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
    status = client.predict(history, api_name="/mark_should_answer")
    assert status == "已記錄您的回饋，謝謝！"
    row = store.rows()[-1]
    assert (row["rating"], row["question"], row["refused"], row["rails"]) == \
        ("should_answer", "推薦台北的牛肉麵", True, ["domain gate"])
