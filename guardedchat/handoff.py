"""Hand-off from a worker thread to an event loop: returns a turn's events (or any iterator's
items) as an async iterator while the work runs in one worker thread. The page, the API and our
model under NeMo (`BackendLLM.stream_async`) read through it.

The page and the API used to ask a worker thread for one event at a time, which stopped llama.cpp
after every token until the loop had sent that token on. Here generation never waits for the loop;
text that piles up while the loop is busy (a slow client, a page redrawing a long answer) is merged
into one event, so a busy loop sends fewer, larger pieces instead of falling further behind.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Sequence

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
    async for batch in batches_in_thread(lambda: pipeline.run(message, history, cancel, access), cancel):
        for event in _merge_text(batch):
            yield event


async def batches_in_thread(open_iterator: Callable[[], Iterator], cancel: threading.Event) -> AsyncIterator[list]:
    """The items of `open_iterator()`, which runs in a worker thread, in lists of what arrived
    while the reader was busy. An exception in the worker reaches the reader after the items before
    it; a reader that leaves sets `cancel`, and the iterator is closed in its own thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed (server shutting down) while the worker was running
            cancel.set()

    def produce() -> None:
        try:
            with closing(open_iterator()) as items:
                for item in items:
                    put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            put(_Failed(exc))
        finally:
            put(_DONE)

    worker = asyncio.ensure_future(run_in_threadpool(produce))
    _running.add(worker)
    worker.add_done_callback(_running.discard)
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            # The worker's end (_Failed, then _DONE) is always the last thing it puts.
            items = list(itertools.takewhile(lambda item: item is not _DONE and not isinstance(item, _Failed), batch))
            if items:
                yield items
            if len(items) < len(batch):
                if isinstance(batch[len(items)], _Failed):
                    raise batch[len(items)].error
                return
    finally:
        cancel.set()


def _merge_text(events: list) -> list:
    """Consecutive text events joined into one."""
    merged: list = []
    for event in events:
        if merged and isinstance(event, TextEvent) and isinstance(merged[-1], TextEvent):
            merged[-1] = TextEvent(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged
