"""Hand-off from a turn to an event loop: returns a turn's events as an async iterator while the
whole turn runs in one worker thread.

The page and the API used to ask a worker thread for one event at a time, which stopped llama.cpp
after every token until the loop had sent that token on. Here generation never waits for the loop;
text that piles up while the loop is busy (a slow client, a page redrawing a long answer) is merged
into one event, so a busy loop sends fewer, larger pieces instead of falling further behind.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from starlette.concurrency import run_in_threadpool

from .pipeline import Event, Pipeline, TextEvent

_DONE = object()
_running: set = set()  # the loop keeps only weak references to tasks


@dataclass(frozen=True)
class _Failed:
    error: BaseException


async def events_in_thread(pipeline: Pipeline, message: str, history: Sequence[dict], access: str,
                           cancel: threading.Event) -> AsyncIterator[Event]:
    """The turn's events as `pipeline.run` yields them, text that waited merged. Leaving the loop
    early (a client that went away, Stop on the page) sets `cancel`: generation stops at the next piece."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed (server shutting down) while the turn was generating
            cancel.set()

    def produce() -> None:
        try:
            with closing(pipeline.run(message, history, cancel, access)) as events:
                for event in events:
                    put(event)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            put(_Failed(exc))
        finally:
            put(_DONE)

    worker = asyncio.ensure_future(run_in_threadpool(produce))
    _running.add(worker)
    worker.add_done_callback(_running.discard)
    waiting = None
    try:
        while (item := waiting or await queue.get()) is not _DONE:
            waiting = None
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, TextEvent):
                item, waiting = _merge_waiting_text(item, queue)
            yield item
    finally:
        cancel.set()


def _merge_waiting_text(event: TextEvent, queue: asyncio.Queue) -> tuple[TextEvent, object]:
    """This event's text joined with the text events queued behind it, and the first queued item
    that is not text (None if there is none)."""
    text = event.text
    while not queue.empty():
        item = queue.get_nowait()
        if not isinstance(item, TextEvent):
            return TextEvent(text), item
        text += item.text
    return TextEvent(text), None
