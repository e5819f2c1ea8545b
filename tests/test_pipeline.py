"""The turn pipeline with a scripted backend: events in order, refusals without a model call, Stop."""

import threading

from guardedchat.domains import load_domain
from guardedchat.pipeline import FinalEvent, Pipeline, RefusalEvent, TextEvent

from .conftest import ROOT, ScriptedBackend

DOMAIN = load_domain(ROOT / "domains" / "mingqing")


def run(pipeline, message, history=(), cancel=None):
    return list(pipeline.run(message, history, cancel))


def test_answer_streams_as_text_events_then_a_final_record():
    backend = ScriptedBackend([["海瑞", "是明朝", "官員。"]])
    events = run(Pipeline(DOMAIN, backend), "海瑞是誰？")
    assert [e.text for e in events if isinstance(e, TextEvent)] == ["海瑞", "是明朝", "官員。"]
    record = events[-1].record
    assert isinstance(events[-1], FinalEvent)
    assert (record.answer, record.refused, record.model_called, record.model) == \
        ("海瑞是明朝官員。", False, True, "scripted")
    assert record.tokens["completion"] == 3
    assert record.tokens["prompt"] == len(backend.prompts[0].text)
    assert backend.closed == 1


def test_empty_message_is_refused_without_calling_the_model():
    backend = ScriptedBackend()
    for message in ["", "   ", "\n\t"]:
        events = run(Pipeline(DOMAIN, backend), message)
        assert isinstance(events[0], RefusalEvent) and events[0].reason == "empty"
        assert events[0].text == "請輸入問題。" + DOMAIN.greeting
        assert events[1].record.model_called is False
        assert events[1].record.rails == ["message limits"]
    assert backend.prompts == []


class Upper:
    """A stream stage that holds text until it sees '。' (like the Taiwan normalizer does)."""

    def __init__(self):
        self.buffer = ""

    def push(self, text):
        self.buffer += text
        cut = self.buffer.rfind("。") + 1
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out.upper()

    def flush(self):
        out, self.buffer = self.buffer, ""
        return out.upper()


def test_stream_stages_rewrite_text_and_flush_at_the_end():
    backend = ScriptedBackend([["ab", "c。d", "e"]])
    events = run(Pipeline(DOMAIN, backend, stream_stages=[Upper]), "問")
    assert [e.text for e in events if isinstance(e, TextEvent)] == ["ABC。", "DE"]
    assert events[-1].record.answer == "ABC。DE"


def test_stop_cancels_generation_and_marks_the_record():
    backend = ScriptedBackend([list("一二三四五六")])
    cancel = threading.Event()
    shown = []
    for event in Pipeline(DOMAIN, backend).run("問", (), cancel):
        if isinstance(event, TextEvent):
            shown.append(event.text)
            if len(shown) == 2:
                cancel.set()
        final = event
    assert shown == ["一", "二"]
    assert final.record.stopped is True and final.record.answer == "一二"
    assert backend.closed == 1


def test_closing_the_event_stream_closes_the_model_stream():
    backend = ScriptedBackend([list("一二三四")])
    events = Pipeline(DOMAIN, backend).run("問")
    next(events)
    events.close()
    assert backend.closed == 1
