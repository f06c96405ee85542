"""Fencing: the trainer's hold on its checkpoint prefix, from start to stop (`service.lease`).

Before anything is restored or consumed the trainer waits for the lease (a refused trainer
is not ready and says why in `/readyz`; a store that answers but refuses writes lets it start,
and the lease is taken before the first checkpoint that can be written); while it trains,
a task renews the lease every third of its TTL; before each checkpoint the lease is checked
on the checkpoint's I/O thread; a graceful stop releases it so a successor starts at once.
Losing it ends training: the trainer leaves the group without another checkpoint or commit,
and serves what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service import metrics
from service.lease import Lease, LeaseHeld, LeaseLost
from service.storage import StorageUnavailable
from service.tasks import OwnedTask
from service.training.status import TrainerStatus

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Acquires, renews, checks and releases one `Lease`, on the event loop's behalf."""

    def __init__(self, lease: Lease, status: TrainerStatus) -> None:
        self.lease = lease
        self.status = status
        self.lost: LeaseLost | None = None
        self._renewal = OwnedTask("streamfit-lease", self._renew_forever)

    @property
    def interval_s(self) -> float:
        return self.lease.ttl_s / 3

    async def acquire(self, stopping: asyncio.Event) -> None:
        """Wait until the lease is ours; raises LeaseHeld if `stopping` is set meanwhile."""
        refused = False
        while True:
            try:
                await asyncio.to_thread(self.lease.acquire)
                break
            except LeaseHeld as exc:
                if not refused:  # one line, not one per attempt
                    log.warning(
                        "checkpoint prefix held by another trainer, waiting",
                        extra={"error": str(exc)},
                    )
                refused = True
                self.status.last_error = str(exc)
            except StorageUnavailable as exc:
                self.status.last_error = f"checkpoint store unavailable: {exc}"
                log.warning(
                    "checkpoint store unavailable, lease retried", extra={"error": str(exc)}
                )
            except OSError as exc:  # it answers but refuses writes (read-only, permissions)
                log.warning(
                    "cannot write the lease; taken before the first checkpoint that can be written",
                    extra={"error": str(exc)},
                )
                self._renewal.start()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=min(self.interval_s, 2.0))
            if stopping.is_set():
                raise LeaseHeld("stopped while waiting for the checkpoint prefix")
        self.status.last_error = None
        self._leased()
        self._renewal.start()

    def check(self) -> None:
        """Before a checkpoint write (on its I/O thread): LeaseLost if taken over. A lease
        that could not be written at start is taken now (an OSError if it still cannot be:
        the checkpoint fails as its own write would; LeaseLost if another trainer has it)."""
        try:
            self._take_if_pending()
            self.lease.check()
        except LeaseLost as exc:
            self.lost = exc
            raise

    def _take_if_pending(self) -> None:
        if self.lease.held:
            return
        try:
            self.lease.acquire()
        except LeaseHeld as exc:
            raise LeaseLost(str(exc)) from None
        self._leased()

    def _leased(self) -> None:
        metrics.CHECKPOINT_LEASE_HELD.set(1)
        log.info(
            "checkpoint prefix leased",
            extra={"generation": self.lease.record.generation if self.lease.record else None},
        )

    async def release(self) -> None:
        await self._renewal.stop()
        if self.lost is None:
            await asyncio.to_thread(self.lease.release)
        metrics.CHECKPOINT_LEASE_HELD.set(0)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if self.lease.held:
                    await asyncio.to_thread(self.lease.renew)
                else:
                    await asyncio.to_thread(self._take_if_pending)
            except OSError as exc:  # the checkpoint's own retries show it too
                log.warning("lease not renewed", extra={"error": str(exc)})
            except LeaseLost as exc:
                self.lost = exc
                metrics.CHECKPOINT_LEASE_HELD.set(0)
                return
