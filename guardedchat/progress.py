"""Progress display: returns a small text progress bar (stderr) for long set-up steps."""

from __future__ import annotations

import sys
import threading
import time


class ProgressBar:
    """A bar for a known total, drawn only when stderr is a terminal or forced (CI logs stay clean)."""

    def __init__(self, label: str, total: int, stream=None, width: int = 30):
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.width = width
        self._last_draw = 0.0

    def advance(self, amount: int) -> None:
        self.done = min(self.total, self.done + amount)
        now = time.monotonic()
        if now - self._last_draw > 0.1 or self.done == self.total:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        filled = int(self.width * self.done / self.total)
        percent = 100 * self.done // self.total
        bar = "█" * filled + "░" * (self.width - filled)
        self.stream.write(f"\r{self.label} {bar} {percent:3d}%")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class Spinner:
    """An elapsed-time indicator for steps with no known total (llama.cpp loading a model)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self._started
        self.stream.write(f"\r{self.label} 完成（{elapsed:.1f} 秒）\n")
        self.stream.flush()

    def _run(self) -> None:
        frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
        index = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self._started
            self.stream.write(f"\r{self.label} {frames[index % len(frames)]} {elapsed:.1f} 秒")
            self.stream.flush()
            index += 1
