"""``Clock``: named laps of wall time, as reported in ``SessionInfo.seconds``."""
from __future__ import annotations

import time


class Clock:
    """``lap(name)`` records the seconds since the previous lap under ``name``, and the running total."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.seconds: dict = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 4)
        self.seconds["total"] = round(now - self.start, 4)
        self.last = now
