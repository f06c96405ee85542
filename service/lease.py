"""Lease: one writer per checkpoint prefix (fencing).

Two trainers writing one prefix would interleave versions and each commit offsets for models
the other overwrote. So a writer holds `lease.json` in the prefix: its owner id (new for
every process), host and pid, a generation raised at every takeover, a renewal counter, and
its time to live. The holder renews it every third of the TTL and checks it before every
checkpoint it writes; a writer that finds another owner stops writing (`LeaseLost`).

A newcomer takes the lease when
- there is none, or it was released (a graceful stop releases it);
- it is a previous incarnation on this host: same host and that pid is not running, or is
  this very pid (a restarted container's pid 1). A kill -9 restart so takes over at once;
- the holder stopped renewing: the newcomer saw the same (owner, renewals) for a whole TTL
  on its own monotonic clock. Expiry is judged by the observer's clock, never by comparing
  timestamps across machines, so clock skew cannot make a live lease look expired.

Otherwise it is refused (`LeaseHeld`), consumes nothing and retries.

Known limit: the check before a write and the write itself are two requests. A holder that
stalls between them for longer than the TTL (a paused VM) can write once after a takeover;
the new holder's next version is numbered above it, and readers take the newest valid
version. Conditional writes (S3 `If-Match`) would close that gap.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from service.storage import Storage, StorageUnavailable, process_alive

log = logging.getLogger(__name__)

LEASE = "lease.json"


class LeaseHeld(Exception):
    """Another live writer holds the prefix."""


class LeaseLost(Exception):
    """This writer's lease was taken over: it must stop writing."""


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    host: str
    pid: int
    generation: int
    renewals: int
    ttl_s: float
    renewed_at: float  # wall clock, for people reading the file; never compared
    released: bool = False

    @classmethod
    def parse(cls, payload: bytes) -> LeaseRecord | None:
        try:
            data = json.loads(payload)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except (ValueError, TypeError, KeyError):
            return None  # unreadable: as if absent (a whole-object write cannot tear it)

    def describe(self) -> str:
        return (
            f"owner {self.owner} (host {self.host}, pid {self.pid}, generation {self.generation})"
        )


class Lease:
    """This process's claim on a checkpoint prefix. All methods do blocking I/O."""

    def __init__(
        self,
        storage: Storage,
        ttl_s: float,
        host: str | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.ttl_s = ttl_s
        self.owner = uuid.uuid4().hex
        self.host = host or os.environ.get("HOSTNAME") or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.record: LeaseRecord | None = None  # ours, once held
        self._clock = clock
        self._seen: tuple[str, int] | None = None
        self._seen_since = 0.0

    @property
    def held(self) -> bool:
        return self.record is not None

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeld naming the live holder."""
        current = self._read()
        if current is not None and current.owner != self.owner and not self._takeable(current):
            raise LeaseHeld(
                f"checkpoint prefix {self.storage.location} is written by {current.describe()}; "
                f"taken over once it stops renewing for {current.ttl_s:g} s"
            )
        generation = current.generation + 1 if current is not None else 1
        self._write(generation, renewals=0)
        confirmed = self._read()  # two newcomers at once: the last write wins
        if confirmed is None or confirmed.owner != self.owner:
            self.record = None
            holder = confirmed.describe() if confirmed else "another writer"
            raise LeaseHeld(f"checkpoint prefix {self.storage.location} was taken by {holder}")
        if current is not None and not current.released and current.owner != self.owner:
            log.warning("lease taken over", extra={"from": current.describe()})

    def renew(self) -> None:
        """Extend the lease; LeaseLost if another writer holds it now."""
        record = self.check()
        self._write(record.generation, renewals=record.renewals + 1)

    def check(self) -> LeaseRecord:
        """Ours still (before a write), or LeaseLost."""
        if self.record is None:
            raise LeaseLost(f"no lease held on {self.storage.location}")
        current = self._read()
        if current is None or current.owner != self.owner or current.released:
            self.record = None
            holder = current.describe() if current is not None else "nobody (lease removed)"
            raise LeaseLost(f"lease on {self.storage.location} now held by {holder}")
        return current

    def release(self) -> None:
        """Hand the prefix over at once (a graceful stop); a lost lease is left alone."""
        if self.record is None:
            return
        try:
            record = self.check()
            self.storage.write(LEASE, _encode(LeaseRecord(**{**asdict(record), "released": True})))
        except (LeaseLost, StorageUnavailable, OSError) as exc:
            log.warning("lease not released", extra={"error": str(exc)})
        self.record = None

    # -- helpers -----------------------------------------------------------------------------

    def _takeable(self, current: LeaseRecord) -> bool:
        if current.released:
            return True
        if current.host == self.host and (
            current.pid == self.pid or not process_alive(current.pid)
        ):
            return True  # an earlier process of this host (or this container) that is gone
        seen = (current.owner, current.renewals)
        now = self._clock()
        if seen != self._seen:
            self._seen, self._seen_since = seen, now
            return False
        return now - self._seen_since >= current.ttl_s

    def _read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.parse(self.storage.read(LEASE))
        except FileNotFoundError:
            return None

    def _write(self, generation: int, renewals: int) -> None:
        record = LeaseRecord(
            owner=self.owner,
            host=self.host,
            pid=self.pid,
            generation=generation,
            renewals=renewals,
            ttl_s=self.ttl_s,
            renewed_at=time.time(),
        )
        self.storage.write(LEASE, _encode(record))
        self.record = record


def _encode(record: LeaseRecord) -> bytes:
    return json.dumps(asdict(record), indent=1).encode()
