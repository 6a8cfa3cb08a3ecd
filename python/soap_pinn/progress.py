"""A one-line text progress bar (stderr), redrawn at most every `interval` seconds."""

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

    def update(self, step: int, fields: dict[str, str], force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        done = int(self.width * step / max(self.total, 1))
        rate = (step - self.started_step) / max(now - self.started_at, 1e-9)
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        bar = "#" * done + "." * (self.width - done)
        self.stream.write(f"\r[{bar}] {step}/{self.total} {text} {rate:.1f} steps/s ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
