"""A one-line progress display on a terminal; nothing anywhere else.

The library reports progress through a callback `progress(step, done, total)`
(e.g. ("loading", 0, 1), ("folding", 1200, 5000), ("checking", 0, 1)); this
renderer draws it on stderr when stderr is a terminal, at most ten times a
second, and only once the run has lasted half a second. A timer draws the current
step even while the library is busy inside it (loading a large model, say).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

DELAY_SECONDS = 0.5  # nothing is drawn for runs shorter than this
INTERVAL_SECONDS = 0.1


class TerminalProgress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self._closed = False
        self._current: tuple[str, int, int] | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._current = (step, done, total)
            if self._timer is None:
                self._timer = threading.Timer(DELAY_SECONDS, self._draw_current)
                self._timer.daemon = True
                self._timer.start()
            now = time.monotonic()
            if now - self._started >= DELAY_SECONDS and (now - self._last >= INTERVAL_SECONDS or done >= total):
                self._draw(now)

    def _draw_current(self) -> None:
        with self._lock:
            if not self._closed and self._current is not None:
                self._draw(time.monotonic())

    def _draw(self, now: float) -> None:
        step, done, total = self._current
        self._last = now
        detail = f" {done}/{total}" if total > 1 else ""
        self.stream.write(f"\r\033[Kbnfold: {step}{detail}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Stop drawing and erase the line, so what is printed next starts clean."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False
