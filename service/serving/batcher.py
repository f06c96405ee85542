"""Batcher: concurrent prediction requests coalesced into one forward pass per loop turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from service.model.inputs import Batch, batch_rows, concat
from service.serving.snapshot import SnapshotHolder


class MicroBatcher:
    """Coalesces concurrent prediction requests into one forward pass per loop iteration.

    Requests that arrive while the event loop is busy are queued; one callback scheduled
    with `call_soon` stacks their rows, runs a single forward pass on one snapshot, and
    splits the probabilities back. Must be used from the event loop thread.
    """

    def __init__(
        self, holder: SnapshotHolder, observe: Callable[[float], None] | None = None
    ) -> None:
        self.holder = holder
        self.observe = observe
        self._pending: list[tuple[Batch, asyncio.Future[tuple[np.ndarray, int]]]] = []
        self.batches = 0
        self.requests = 0

    async def predict(self, x: Batch) -> tuple[np.ndarray, int]:
        """Probabilities for `x` and the version of the snapshot that produced them."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, int]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((x, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        snapshot = self.holder.current
        if snapshot is None:
            for _, future in pending:
                if not future.done():
                    future.set_exception(LookupError("no model loaded"))
            return
        started = time.perf_counter()
        rows = pending[0][0] if len(pending) == 1 else concat([x for x, _ in pending])
        probabilities = snapshot.predict(rows)
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        self.batches += 1
        self.requests += len(pending)
        start = 0
        for x, future in pending:
            end = start + batch_rows(x)
            if not future.done():
                future.set_result((probabilities[start:end], snapshot.version))
            start = end
