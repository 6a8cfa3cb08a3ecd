"""A one-line text progress bar (stderr), redrawn at most every `interval` seconds.

On a terminal the line is redrawn in place; otherwise (a log file) a new line is written every 5% of the
run, so logs stay short.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    def __init__(self, total: int, start: int = 0, width: int = 24, interval: float = 0.25, stream=None):
        self.total, self.width, self.interval = total, width, interval
        self.stream = stream if stream is not None else sys.stderr
        self.started_at, self.started_step = time.perf_counter(), start
        self._last_draw = 0.0
        self._interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_line_step = start

    def update(self, step: int, fields: dict[str, str], force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < self.interval:
            return
        if not self._interactive and not force and step - self._last_line_step < max(self.total // 20, 1):
            return
        self._last_draw = now
        done = int(self.width * step / max(self.total, 1))
        rate = (step - self.started_step) / max(now - self.started_at, 1e-9)
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        bar = "#" * done + "." * (self.width - done)
        line = f"[{bar}] {step}/{self.total} {text} {rate:.1f} steps/s "
        if self._interactive:
            self.stream.write("\r" + line)
        else:
            self._last_line_step = step
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._interactive:
            self.stream.write("\n")
        self.stream.flush()
