"""The hand-off from a turn's worker thread to an event loop (the page and the API use it), with
scripted backends: generation runs ahead of a busy reader, waiting text is merged, errors reach the
reader, and a reader that leaves stops generation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from guardedchat.domains import load_domain
from guardedchat.errors import BackendError
from guardedchat.handoff import events_in_thread
from guardedchat.pipeline import FinalEvent, Pipeline, TextEvent

from .conftest import ROOT, ScriptedBackend

MINGQING = load_domain(ROOT / "domains/mingqing")


class ReaderWatchingBackend(ScriptedBackend):
    """Writes one piece, waits until the reader has it, then writes the rest without waiting."""

    def __init__(self):
        super().__init__()
        self.first_read, self.all_written = threading.Event(), threading.Event()

    def stream(self, prompt, settings, cancel=None):
        yield "甲"
        self.first_read.wait(5)
        yield from ["乙", "丙", "丁"]
        self.all_written.set()


class FailingBackend(ScriptedBackend):
    def stream(self, prompt, settings, cancel=None):
        yield "甲"
        raise BackendError("推論伺服器在回答途中中斷。")


class EndlessBackend(ScriptedBackend):
    """Writes until cancelled; counts what it wrote."""

    def __init__(self):
        super().__init__()
        self.written, self.stopped = 0, threading.Event()

    def stream(self, prompt, settings, cancel=None):
        try:
            while not cancel.is_set():
                self.written += 1
                yield "字"
                cancel.wait(0.01)
        finally:
            self.stopped.set()


def _read(backend, on_event=None) -> list:
    async def read() -> list:
        events = []
        async for event in events_in_thread(Pipeline(MINGQING, backend), "問題", [], "public", threading.Event()):
            events.append(event)
            if on_event is not None and await on_event(events):
                break
        return events

    return asyncio.run(read())


def test_generation_runs_ahead_of_a_busy_reader_and_waiting_text_is_merged():
    backend = ReaderWatchingBackend()

    async def busy_after_the_first(events) -> bool:
        if len(events) == 1:
            backend.first_read.set()
            # The loop is busy elsewhere; the turn must go on generating meanwhile.
            assert await asyncio.to_thread(backend.all_written.wait, 5)
            await asyncio.sleep(0.05)
        return False

    events = _read(backend, busy_after_the_first)
    assert [event.text for event in events if isinstance(event, TextEvent)] == ["甲", "乙丙丁"]
    assert isinstance(events[-1], FinalEvent) and events[-1].record.answer == "甲乙丙丁"


def test_an_engine_error_reaches_the_reader_after_the_text_before_it():
    seen = []

    async def keep(events) -> bool:
        seen.extend(events[len(seen):])
        return False

    with pytest.raises(BackendError, match="中斷"):
        _read(FailingBackend(), keep)
    assert seen == [TextEvent("甲")]


def test_a_reader_that_leaves_stops_generation():
    backend = EndlessBackend()

    async def leave_after_three(events) -> bool:
        return sum(len(e.text) for e in events if isinstance(e, TextEvent)) >= 3

    _read(backend, leave_after_three)
    assert backend.stopped.wait(5)
    written = backend.written
    assert written < 50 and backend.written == written


def test_our_model_streams_to_nemo_through_the_same_hand_off():
    from guardedchat.pipeline import sampling
    from guardedchat.rails import BackendLLM

    async def read() -> list:
        return [chunk.delta_content async for chunk in BackendLLM(ScriptedBackend(["甲乙丙"]), sampling(MINGQING))
                .stream_async("問題")]

    assert "".join(asyncio.run(read())) == "甲乙丙"
