"""A one-line progress display on a terminal; nothing anywhere else.

The library reports progress through a callback `progress(step, done, total)`
(e.g. ("loading", 0, 1), ("folding", 1200, 5000), ("checking", 0, 1)); this
renderer draws it on stderr when stderr is a terminal, at most ten times a
second, and only once the run has lasted half a second. A timer redraws the current
step while the library is busy inside it (loading a large model, running the
check), with the seconds it has taken so far. The clock and that timer are the
caller's to replace (`clock=`, `background=False` and `tick()`), so a test can
move time on without waiting for it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

DELAY_SECONDS = 0.5  # nothing is drawn for runs shorter than this
INTERVAL_SECONDS = 0.1
TICK_SECONDS = 0.2  # redraws of a step the library is busy inside


class TerminalProgress:
    """`progress(step, done, total)` drawn on `stream` (stderr); `enabled` None: only when it is a terminal.

    `clock`: seconds, monotonic. `background`: a timer thread calls `tick()` while a step runs.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._clock = clock
        self._background = background
        self._started = clock()
        self._last = 0.0
        self._drawn = False
        self._closed = False
        self._current: tuple[str, int, int] | None = None
        self._step_started = self._started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._current is None or self._current[0] != step:
                self._step_started = self._clock()
            self._current = (step, done, total)
            if self._ticker is None and self._background:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
            now = self._clock()
            if now - self._started >= DELAY_SECONDS and (now - self._last >= INTERVAL_SECONDS or done >= total):
                self._draw(now)

    def tick(self) -> None:
        """Redraw the current step while the library is busy inside it, so its seconds keep counting."""
        with self._lock:
            now = self._clock()
            if not self._closed and self._current is not None and now - self._started >= DELAY_SECONDS:
                self._draw(now)

    def _tick(self) -> None:
        self._stop.wait(DELAY_SECONDS)
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(TICK_SECONDS)

    def _draw(self, now: float) -> None:
        if self._current is None:
            return
        step, done, total = self._current
        self._last = now
        detail = f" {done}/{total}" if total > 1 else f" {now - self._step_started:.1f} s"
        self.stream.write(f"\r\033[Kbnfold: {step}{detail}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Stop drawing and erase the line, so what is printed next starts clean."""
        with self._lock:
            self._closed = True
            self._stop.set()
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False
