"""The page, launched for real and driven by gradio_client: chat, refusal, domain switch, feedback."""

import json
import re

import httpx
import pytest
from gradio_client import Client
from starlette.requests import Request

from guardedchat.feedback import FeedbackStore
from guardedchat.grounding import sources_line
from guardedchat.settings import PageSettings, load_settings
from guardedchat.errors import InputError
from guardedchat.service import client_address
from guardedchat.ui import server_options

from .conftest import ScriptedBackend, free_port, start_page

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    app, url, store = start_page(tmp_path_factory.mktemp("ui"))
    yield url, store
    app.close()


def texts(history):
    """(role, text, refusal title or None) per message."""
    rows = []
    for m in history:
        text = "".join(part["text"] for part in m["content"])
        title = text.split("**")[1] if text.startswith("🚫 **") else None
        rows.append((m["role"], text.split("\n\n> ", 1)[1] if title else text, title))
    return rows


def test_in_scope_question_streams_an_answer(page):
    url, _ = page
    history, panel = Client(url, verbose=False).predict("鄭成功如何取得台灣？", [], "mingqing", api_name="/respond")
    (user, question, _), (assistant, answer, title) = texts(history)
    assert (user, question, assistant, title) == ("user", "鄭成功如何取得台灣？", "assistant", None)
    assert answer.startswith("摘自資料〈鄭成功〉：「") and "熱蘭遮城" in answer.split("\n\n")[0]
    assert answer.endswith("\n\n來源：[1] 鄭成功（《清史稿》、連橫《臺灣通史·建國紀》、楊英《從征實錄》）")
    assert "**閘門分數**" in panel and "**回答方式**：引用資料原文（未呼叫模型）" in panel


def test_refusal_is_styled_apart_and_names_the_rail(page):
    url, _ = page
    history, panel = Client(url, verbose=False).predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
    assert texts(history)[1][2] == "超出範圍"
    assert texts(history)[1][1].startswith("抱歉，這個問題超出「明清人物研究助理」的範圍。")
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
    status, comment = client.predict(history, "其實我想問的是牛肉麵的歷史", api_name="/mark_should_answer")
    assert (status, comment) == ("已記錄您的回饋，謝謝！", "")
    row = store.rows()[-1]
    assert (row["rating"], row["question"], row["refused"], row["rails"], row["comment"]) == \
        ("should_answer", "推薦台北的牛肉麵", True, ["domain gate"], "其實我想問的是牛肉麵的歷史")
    too_long, _ = client.predict(history, "長" * 2001, api_name="/mark_should_answer")
    assert too_long == "⚠️ 意見太長（2001 字，上限 2000）。修正：請縮短後再送出。"


def test_export_markdown_and_json(page):
    url, _ = page
    client = Client(url, verbose=False)
    history, _ = client.predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
    markdown = open(client.predict(history, "mingqing", api_name="/export_markdown"), encoding="utf-8").read()
    assert markdown.startswith("# GuardedChat 對話（mingqing）\n\n**你**：推薦台北的牛肉麵\n\n**助理**（拒絕）：🚫 **超出範圍**")
    exported = json.load(open(client.predict(history, "mingqing", api_name="/export_json"), encoding="utf-8"))
    assert exported["messages"][0] == {"role": "user", "content": "推薦台北的牛肉麵", "refusal": False}


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    settings = PageSettings(profile="showcase", show_panel=False, rate_limit_per_minute=2, max_message_chars=30,
                            max_turns=2, queue_size=4, trusted_proxies=["127.0.0.1"])
    app, url, _ = start_page(tmp_path_factory.mktemp("showcase"), settings)
    yield url
    app.close()


def last_reply(client, message, history=(), ip="10.0.0.1"):
    history, _ = client.predict(message, list(history), "mingqing", api_name="/respond")
    return history, texts(history)[-1]


def test_showcase_limits(showcase):
    client = Client(showcase, verbose=False, headers={"x-forwarded-for": "10.0.0.1"})
    _, (_, text, title) = last_reply(client, "長" * 31)
    assert (title, text) == ("網頁限制", "抱歉，訊息太長（這個網頁上限 30 字）。請縮短問題後再試一次。")
    history = [{"role": role, "content": [{"type": "text", "text": text}]}
               for role, text in (("user", "甲"), ("assistant", "乙"), ("user", "丙"), ("assistant", "丁"))]
    _, (_, text, _) = last_reply(client, "海瑞是誰？", history)
    assert text == "這段對話已達 2 輪上限。請按「清除」開始新的對話。"


def test_showcase_rate_limit_per_forwarded_client(showcase):
    first = Client(showcase, verbose=False, headers={"x-forwarded-for": "10.0.0.7"})
    second = Client(showcase, verbose=False, headers={"x-forwarded-for": "10.0.0.8"})
    replies = [last_reply(first, "你好")[1][1] for _ in range(3)]
    assert replies[2] == "您的提問太頻繁了（每分鐘最多 2 則）。請稍候再試。"
    assert last_reply(second, "你好")[1][1].startswith("您好")


def like(url, session_hash, history, index, liked, comment=""):
    """👍 (liked) or 👎 on message `index`, sent as the browser sends it (gradio_client cannot send
    a like's event data): returns the rating's outputs (status, comment box)."""
    config = httpx.get(url + "config").json()
    rate = next(d for d in config["dependencies"] if d.get("api_name") == "rate")
    kinds = {c["id"]: c["type"] for c in config["components"]}
    values = {"chatbot": history, "textbox": comment, "state": None}
    body = {"data": [values[kinds[i]] for i in rate["inputs"]],
            "event_data": {"index": index, "value": history[index]["content"], "liked": liked},
            "fn_index": rate["id"], "trigger_id": rate["targets"][0][0], "session_hash": session_hash}
    event_id = httpx.post(url + "gradio_api/queue/join", json=body, timeout=30).json()["event_id"]
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session_hash}, timeout=30) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                return message["output"]["data"]


def gate_score(panel: str) -> float:
    return float(re.search(r"\*\*閘門分數\*\*：([0-9.]+)", panel).group(1))


def test_each_rating_is_stored_with_the_turn_it_was_given_on(tmp_path):
    """Three turns (two answers, then a refusal); 👍 on the first answer, 👎 on the second."""
    backend = ScriptedBackend(["海瑞是明朝的清官[1]。", "鄭和七次下西洋[1]。"], chat_template=True)
    app, url, store = start_page(tmp_path, backend=backend)
    try:
        client = Client(url, verbose=False)
        history, panels = [], []
        for question in ("海瑞是誰？", "鄭和下西洋幾次？", "推薦台北的牛肉麵"):
            history, panel = client.predict(question, history, "mingqing", api_name="/respond")
            panels.append(panel)
        statuses = [like(url, client.session_hash, history, 1, True, "清楚"),
                    like(url, client.session_hash, history, 3, False), like(url, client.session_hash, history, 2, True)]
    finally:
        app.close()
    rows = FeedbackStore(tmp_path / "feedback.sqlite3").rows()
    assert [(r["rating"], r["comment"], r["question"], r["answer"], r["model"], r["gate_score"], r["refused"])
            for r in rows] == [
        ("up", "清楚", "海瑞是誰？", "海瑞是明朝的清官[1]。", "scripted", gate_score(panels[0]), False),
        ("down", "", "鄭和下西洋幾次？", "鄭和七次下西洋[1]。", "scripted", gate_score(panels[1]), False)]
    shown = [texts(history)[i][1] for i in (1, 3)]
    assert [r["answer"] + "\n\n" + sources_line(r["sources"]) for r in rows] == shown  # the sources it showed
    assert [m["content"] for m in rows[1]["messages"]] == ["海瑞是誰？", "海瑞是明朝的清官[1]。", "鄭和下西洋幾次？",
                                                          "鄭和七次下西洋[1]。"]
    assert statuses == [["已記錄您的回饋，謝謝！", ""], ["已記錄您的回饋，謝謝！", ""], ["（這則訊息沒有可評分的回答）", ""]]


@pytest.fixture(scope="module")
def open_showcase(tmp_path_factory):
    """A showcase with no trusted proxy (the default) on the scripted model."""
    settings = PageSettings(profile="showcase", show_panel=False, rate_limit_per_minute=2, max_message_chars=30)
    app, url, _ = start_page(tmp_path_factory.mktemp("open-showcase"), settings, backend=ScriptedBackend())
    yield url
    app.close()


def test_forwarded_for_is_ignored_without_a_trusted_proxy(open_showcase):
    """Three clients, each naming another address: all are one client (the server did not believe them)."""
    replies = [last_reply(Client(open_showcase, verbose=False, headers={"x-forwarded-for": f"10.9.0.{i}"}), "你好")[1][1]
               for i in range(3)]
    assert replies[2] == "您的提問太頻繁了（每分鐘最多 2 則）。請稍候再試。"


def starlette_request(peer, forwarded):
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "client": (peer, 50000), "headers": headers})


@pytest.mark.parametrize("peer,forwarded,trusted,address", [
    ("127.0.0.1", ["10.0.0.1"], [], "127.0.0.1"),
    ("127.0.0.1", ["10.0.0.1"], ["127.0.0.1"], "10.0.0.1"),
    ("127.0.0.1", ["6.6.6.6, 10.0.0.1"], ["127.0.0.1"], "10.0.0.1"),  # the client wrote 6.6.6.6 itself
    ("127.0.0.1", ["6.6.6.6", "10.0.0.1"], ["127.0.0.1"], "10.0.0.1"),  # repeated headers count as one list
    ("127.0.0.1", ["6.6.6.6, 10.0.0.1, 10.1.1.1"], ["127.0.0.1", "10.1.1.1"], "10.0.0.1"),  # two proxies
    ("10.0.0.9", ["6.6.6.6"], ["127.0.0.1"], "10.0.0.9"),
    ("127.0.0.1", [], ["127.0.0.1"], "127.0.0.1"),
])
def test_client_address_believes_only_our_trusted_proxies(peer, forwarded, trusted, address):
    assert client_address(starlette_request(peer, forwarded), trusted) == address


@pytest.mark.parametrize("profile,run_history", [("desktop", None), ("showcase", False), ("lab", False)])
def test_run_history_is_off_where_others_use_the_page(profile, run_history):
    assert server_options(PageSettings(profile=profile)).get("run_history") == run_history


def test_showcase_page_keeps_no_run_history(open_showcase):
    """Gradio's run history would keep every answer in the browser's localStorage, past a logout."""
    assert httpx.get(open_showcase + "config", timeout=10).json()["run_history"] is False
    assert httpx.get(open_showcase + "gradio_api/runs", timeout=10).status_code == 404


@pytest.mark.parametrize("profile,env,message", [
    ("nope", {}, "不認得的部署設定檔 'nope'。修正：GUARDEDCHAT_PROFILE 用 desktop, showcase, lab 之一。"),
    ("lab", {}, "部署設定檔 'lab' 需要登入，但沒有設定使用者。修正：設定 GUARDEDCHAT_USERS=\"名稱:密碼\" 或在設定檔加上 users:。"),
])
def test_bad_profiles_say_what_to_do(monkeypatch, profile, env, message):
    monkeypatch.delenv("GUARDEDCHAT_USERS", raising=False)
    with pytest.raises(InputError) as caught:
        load_settings(profile)
    assert str(caught.value) == message


def test_profiles_and_settings_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GUARDEDCHAT_USERS", "ada:pw1,lin:pw2")
    lab = load_settings("lab")
    assert lab.users == {"ada": "pw1", "lin": "pw2"} and lab.login_required
    showcase = load_settings("showcase")
    assert (showcase.show_panel, showcase.rate_limit_per_minute, showcase.max_turns) == (False, 10, 20)
    path = tmp_path / "settings.yaml"
    path.write_text("max_turns: 5\ntrusted_proxies: [10.1.1.1]\n", encoding="utf-8")
    assert load_settings("showcase", path).max_turns == 5
    path.write_text("max_turnz: 5\n", encoding="utf-8")
    with pytest.raises(InputError, match="max_turnz"):
        load_settings("showcase", path)


def test_undo_and_retry(page):
    url, _ = page
    client = Client(url, verbose=False)
    history, _ = client.predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
    assert client.predict(history, api_name="/undo_last") == []
    again, _ = client.predict(history, "mingqing", api_name="/retry_last")
    assert [t[:2] for t in texts(again)][0] == ("user", "推薦台北的牛肉麵") and texts(again)[1][2] == "超出範圍"


SERVER = """
import sys
from guardedchat.feedback import FeedbackStore
from guardedchat.ui import ChatService, create_app, launch
service = ChatService(feedback=FeedbackStore(sys.argv[1]))
launch(create_app(service), service=service, server_name="127.0.0.1", server_port=int(sys.argv[2]), quiet=True,
       inbrowser=False)
"""


def test_ratings_through_the_page_survive_sigkill(tmp_path):
    """8 clients rate through the running page; it is SIGKILLed mid-run; every acknowledged rating is there."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    db, port = tmp_path / "feedback.sqlite3", free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(db), str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                Client(url, verbose=False)
                break
            except Exception:
                assert time.time() < deadline, "the page did not start"
                time.sleep(1)
        acknowledged, lock = [], threading.Lock()

        def rater():
            client = Client(url, verbose=False)
            history, _ = client.predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
            for _ in range(125):
                try:
                    status, _ = client.predict(history, "", api_name="/mark_should_answer")
                except Exception:
                    return  # the server was killed
                if status == "已記錄您的回饋，謝謝！":
                    with lock:
                        acknowledged.append(1)

        threads = [threading.Thread(target=rater) for _ in range(8)]
        for thread in threads:
            thread.start()
        while len(acknowledged) < 600 and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    stored = FeedbackStore(db).rows()
    assert len(acknowledged) >= 600 and len(stored) >= len(acknowledged)
    assert all(row["rating"] == "should_answer" and row["question"] == "推薦台北的牛肉麵" for row in stored)
