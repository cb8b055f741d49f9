"""A one-line progress display on a terminal; nothing anywhere else.

The library reports progress through a callback `progress(step, done, total)`
(e.g. ("loading", 0, 1), ("folding", 1200, 5000), ("checking", 0, 1)); this
renderer draws it on stderr when stderr is a terminal, at most ten times a
second, and only for steps that take more than a moment.
"""

from __future__ import annotations

import sys
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

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._started < DELAY_SECONDS or (now - self._last < INTERVAL_SECONDS and done < total):
            return
        self._last = now
        detail = f" {done}/{total}" if total > 1 else ""
        self.stream.write(f"\r\033[Kbnfold: {step}{detail}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the line, so what is printed next starts clean."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
