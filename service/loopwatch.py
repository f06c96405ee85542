"""Loop watch: measures how late the event loop wakes up, so blocking it cannot go unseen."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from service import metrics
from service.tasks import OwnedTask


class LoopWatch:
    """A task that sleeps `interval_s` and records the overshoot; keeps the recent maximum."""

    def __init__(self, interval_s: float = 0.05, window_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.max_lag_s = 0.0
        self.last_lag_s = 0.0
        self._recent: deque[tuple[float, float]] = deque()
        self._task = OwnedTask("streamfit-loopwatch", self._run)

    @property
    def recent_max_lag_s(self) -> float:
        """Largest lag seen in the last `window_s` seconds."""
        return max((lag for _, lag in self._recent), default=0.0)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = max(time.perf_counter() - before - self.interval_s, 0.0)
            self.last_lag_s = lag
            now = time.monotonic()
            self._recent.append((now, lag))
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()
            self.max_lag_s = max(self.max_lag_s, lag)
            metrics.EVENT_LOOP_LAG.observe(lag)
