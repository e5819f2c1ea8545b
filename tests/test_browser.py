"""The page in a real browser: Debian's chromium driven by Playwright. Type a question and watch the
answer stream, press Stop, give a 👎, switch domain; screenshots go to build/screenshots/."""

import shutil
import time

import pytest


from .conftest import ROOT, start_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"),
]
SHOTS = ROOT / "build" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    # Streaming and Stop need model text: quoted answers (the default model's default) arrive whole.
    patch = pytest.MonkeyPatch()
    patch.setenv("GUARDEDCHAT_ANSWER_MODE", "generate")
    app, url, store = start_page(tmp_path_factory.mktemp("browser"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("textarea")
        yield page, store
        browser.close()
    app.close()
    patch.undo()


def _assistant_texts(page):
    return page.locator(".message-row.bot-row, [data-testid='bot']").all_inner_texts()


def _ask(page, question):
    box = page.locator("textarea").first
    box.fill(question)
    box.press("Enter")


def test_stream_stop_dislike_and_switch(browser_page):
    page, store = browser_page
    page.screenshot(path=str(SHOTS / "01-arrival.png"), full_page=True)
    assert "明清人物研究助理" in page.content()

    before = len(_assistant_texts(page))
    _ask(page, "鄭成功如何取得台灣？")
    seen = set()
    deadline = time.time() + 60
    while time.time() < deadline:
        texts = _assistant_texts(page)
        if len(texts) > before and texts[-1].strip():
            seen.add(texts[-1])
        if len(seen) >= 2:
            break
        time.sleep(0.05)
    assert len(seen) >= 2, "the answer should appear piece by piece"
    page.screenshot(path=str(SHOTS / "02-streaming.png"), full_page=True)

    page.get_by_role("button", name="停止").click()
    page.wait_for_timeout(500)
    stopped = _assistant_texts(page)[-1]
    page.wait_for_timeout(1500)
    assert _assistant_texts(page)[-1] == stopped, "Stop should end the answer"
    page.screenshot(path=str(SHOTS / "03-stopped.png"), full_page=True)

    _ask(page, "推薦台北的牛肉麵")
    page.wait_for_selector("text=超出範圍", timeout=30000)
    page.screenshot(path=str(SHOTS / "04-refusal.png"), full_page=True)
    page.get_by_role("button", name="這題應該回答").click()
    page.wait_for_selector("text=已記錄您的回饋", timeout=10000)

    _ask(page, "海瑞是誰？")
    dislike = page.locator("button[aria-label='Dislike'], button[title='Dislike']")
    dislike.last.wait_for(timeout=60000)
    page.wait_for_timeout(3000)
    dislike.last.click()
    deadline = time.time() + 10
    while time.time() < deadline and not any(r["rating"] == "down" for r in store.rows()):
        time.sleep(0.1)
    assert [r["rating"] for r in store.rows()] == ["should_answer", "down"]

    page.locator("input[role='listbox'], .wrap-inner input").first.click()
    page.get_by_role("option", name="RISC-V 知識小助手").click()
    page.wait_for_selector("text=您好，我是 RISC-V 知識小助手", timeout=10000)
    page.screenshot(path=str(SHOTS / "05-riscv.png"), full_page=True)
    assert "鄭成功" not in "".join(_assistant_texts(page))
