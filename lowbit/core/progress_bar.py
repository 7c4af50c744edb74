"""A one-line text progress bar with ETA for the command line (stderr)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as a progress sink: ``bar(stage, done, total, message)``.

    Redraws at most ten times a second, and only on a terminal; elsewhere (a pipe, a
    log file) it prints one line per stage so logs stay readable.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage = ""
        self._t_stage = time.monotonic()
        self._last = 0.0

    def __call__(self, stage: str, done: float, total: float | None = None, message: str = "") -> None:
        now = time.monotonic()
        if stage != self._stage:
            if self._stage and self.tty:
                self.stream.write("\n")
            self._stage, self._t_stage = stage, now
            if not self.tty:
                self.stream.write(f"{stage}...\n")
                self.stream.flush()
        finished = total is not None and done >= total
        if not self.tty or (now - self._last < 0.1 and not finished):
            return
        self._last = now
        if total:
            frac = min(1.0, max(0.0, done / total))
            fill = int(frac * self.width)
            elapsed = now - self._t_stage
            eta = f" ETA {elapsed * (1 - frac) / frac:5.0f}s" if 0 < frac < 1 else ""
            bar = "#" * fill + "." * (self.width - fill)
            line = f"\r{stage:>10} [{bar}] {frac * 100:5.1f}%{eta} {message}"
        else:
            line = f"\r{stage:>10} {message}"
        self.stream.write(line[:150].ljust(150))
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line; calling it again does nothing."""
        if self._stage and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._stage = ""
