"""Lag health: Burrow's sliding-window status of each partition, and the lag in seconds.

A count of records behind says little without its trend: 50,000 records of lag that shrink
are a consumer catching up, 500 that never move are a stuck one. LinkedIn's Burrow judges a
partition from a window of (time, consumer offset, lag) points instead of a threshold; this
module applies Burrow's rules ("Consumer Lag Evaluation Rules", linkedin/Burrow wiki;
`calculatePartitionStatus` in its evaluator) to the positions the trainer learns up to, in
Burrow's order:

1. OK if the lag is 0 now or at any point of the window.
2. REWIND if the offset ever went backwards within the window.
3. STOP if nothing was observed for longer than the window spans (the consumer stopped).
4. STALL if the offset did not move over the window while there is lag.
5. WARN if the offset moves but the lag never decreases from one point to the next.
6. OK otherwise.

Besides Burrow's rules: a partition whose position was reset to the log start because the log
was replaced or expired (`rewound`) is REWIND until its lag first reaches 0.

Differences from Burrow, because the trainer reports its position every poll rather than
every minute: a point enters the window at most every `interval_s` (and at once when the
offset goes backwards); STALL and WARN need `min_points` points (Burrow also judges a
two-point window) and STOP needs at least `stop_after_s` of silence (Burrow's rule flags a
one-point window as soon as any time passes).

Lag in seconds is how old the next record to learn is. Each observation may carry the
timestamp of the last record learned (aiokafka `ConsumerRecord.timestamp`, ms), and each one
notes when the log end was first seen past an offset: the record at the position was appended
after the last time the log end was seen at or below it and before the first time it was seen
above it. The last learned record's timestamp, clamped into that interval, estimates when
the next one was produced (producers write continuously: their neighbours are about as old;
the interval guards against an idle producer and clock skew). Without an interval (the record
predates the first observation) the timestamp alone is used, else the first time the offset
was known to exist, which gives a lower bound.

Not thread-safe: the trainer observes and the API evaluates on the event loop.

>>> health = LagHealth(interval_s=1.0)
>>> for second in range(5):  # the consumer learns 100 records a second, the producer adds 200
...     health.observe(0, position=100 * second, log_end=1000 + 200 * second, now=float(second))
>>> health.evaluate(0, now=4.5)["status"]
'WARN'
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

MAX_LOG_END_MARKS = 256


class LagStatus(enum.StrEnum):
    """Burrow's partition statuses (its NOTFOUND and ERR are group-level)."""

    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    REWIND = "REWIND"


SEVERITY = {
    LagStatus.OK: 0,
    LagStatus.WARN: 1,
    LagStatus.STALL: 2,
    LagStatus.STOP: 3,
    LagStatus.REWIND: 4,
}


@dataclass(frozen=True)
class LagPoint:
    """One observation: when, the consumer's position (next offset), the log end, the lag."""

    time: float
    offset: int
    log_end: int

    @property
    def lag(self) -> int:
        # Log ends are read at other moments than positions: a negative lag counts as 0.
        return max(self.log_end - self.offset, 0)


@dataclass
class _Partition:
    window: deque[LagPoint]
    latest: LagPoint | None = None
    # (log end, when first seen, when last seen lower), increasing log ends: record r was
    # appended between the 3rd and 2nd fields of the first mark with log end > r.
    log_end_marks: list[tuple[int, float, float | None]] = field(default_factory=list)
    # (offset, produce time in s) of the last record learned.
    last_record: tuple[int, float] | None = None
    # The position was reset to the log start (log replaced or expired): REWIND until the
    # partition's lag first reaches 0.
    rewound: bool = False


class LagHealth:
    """Per-partition windows of positions and log ends, judged with Burrow's rules."""

    def __init__(
        self,
        window: int = 10,
        interval_s: float = 5.0,
        min_points: int = 3,
        stop_after_s: float | None = None,
    ) -> None:
        if window < 2 or min_points < 2 or min_points > window or interval_s <= 0:
            raise ValueError("need 2 <= min_points <= window and interval_s > 0")
        self.window = window
        self.interval_s = interval_s
        self.min_points = min_points
        self.stop_after_s = 3 * interval_s if stop_after_s is None else stop_after_s
        self._partitions: dict[Hashable, _Partition] = {}

    def __contains__(self, partition: Hashable) -> bool:
        return partition in self._partitions

    def partitions(self) -> list[Hashable]:
        return list(self._partitions)

    def rewound(self, partition: Hashable) -> None:
        """The consumer's position was moved back because the log was replaced or expired:
        REWIND until the lag first reaches 0, whatever the window says."""
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition(deque(maxlen=self.window))
        state.rewound = True

    def forget(self, partition: Hashable) -> None:
        """Drop a partition's history (e.g. when it is revoked from this consumer)."""
        self._partitions.pop(partition, None)

    def observe(
        self,
        partition: Hashable,
        position: int,
        log_end: int,
        now: float | None = None,
        last_record_timestamp_ms: int | None = None,
    ) -> None:
        """Note the position (next offset to learn) and log end; cheap enough for every poll.

        `last_record_timestamp_ms` is the timestamp of the record just before `position`
        (the last one learned), when this call follows a batch that had records from it.
        """
        now = time.time() if now is None else now
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition(deque(maxlen=self.window))
        point = LagPoint(now, int(position), int(log_end))
        latest = state.latest
        if latest is not None and point.offset < latest.offset:
            # A rewind must enter the window, with the point it went back from.
            if not state.window or state.window[-1] is not latest:
                state.window.append(latest)
            state.window.append(point)
        elif not state.window or now - state.window[-1].time >= self.interval_s:
            state.window.append(point)
        self._mark_log_end(state, point, latest.time if latest is not None else None)
        state.latest = point
        if point.lag == 0:
            state.rewound = False
        if last_record_timestamp_ms is not None and last_record_timestamp_ms >= 0:
            state.last_record = (point.offset - 1, last_record_timestamp_ms / 1000.0)

    def _mark_log_end(self, state: _Partition, point: LagPoint, previous: float | None) -> None:
        marks = state.log_end_marks
        if not marks or point.log_end > marks[-1][0]:
            marks.append((point.log_end, point.time, previous))
        # Marks wholly below the position bound nothing still to learn; keep the last of them
        # as the lower side of the next record's interval.
        drop = 0
        while drop + 1 < len(marks) and marks[drop + 1][0] <= point.offset:
            drop += 1
        del marks[:drop]
        if len(marks) > MAX_LOG_END_MARKS:
            # Far behind for long: halve the resolution, keeping both ends.
            state.log_end_marks = marks[:-1:2] + [marks[-1]]

    def evaluate(
        self, partition: Hashable, now: float | None = None, log_end: int | None = None
    ) -> dict[str, Any]:
        """{"status", "lag", "lag_seconds", "position", "log_end_offset", "observed_at"}.

        `log_end`, if given, is a fresher log end than the last observation's (Burrow judges
        the current lag from the broker's newest offsets). KeyError for an unknown partition.
        """
        now = time.time() if now is None else now
        state = self._partitions[partition]
        observed = state.latest
        if observed is None:  # marked rewound, not observed yet
            return {
                "status": LagStatus.REWIND.value,
                "lag": None,
                "lag_seconds": None,
                "position": None,
                "log_end_offset": log_end,
                "observed_at": None,
            }
        latest = observed
        if log_end is not None and log_end > latest.log_end:
            latest = LagPoint(latest.time, latest.offset, int(log_end))
        points = list(state.window)
        if points[-1] is not observed:
            points.append(observed)
        status = LagStatus.REWIND if state.rewound else self._status(points, latest.lag, now)
        return {
            "status": status.value,
            "lag": latest.lag,
            "lag_seconds": self._lag_seconds(state, latest, now),
            "position": latest.offset,
            "log_end_offset": latest.log_end,
            "observed_at": latest.time,
        }

    def evaluate_all(self, now: float | None = None) -> dict[Hashable, dict[str, Any]]:
        now = time.time() if now is None else now
        return {partition: self.evaluate(partition, now) for partition in self._partitions}

    def worst(self, now: float | None = None) -> str:
        """The most severe status over all partitions (OK when none is known)."""
        statuses = [LagStatus(e["status"]) for e in self.evaluate_all(now).values()]
        return max(statuses, key=SEVERITY.__getitem__, default=LagStatus.OK).value

    def _status(self, points: list[LagPoint], current_lag: int, now: float) -> LagStatus:
        if current_lag == 0 or any(p.lag == 0 for p in points):
            return LagStatus.OK
        pairs = list(zip(points, points[1:], strict=False))
        if any(b.offset < a.offset for a, b in pairs):
            return LagStatus.REWIND
        span = points[-1].time - points[0].time
        if now - points[-1].time > max(span, self.stop_after_s):
            return LagStatus.STOP
        if len(points) < self.min_points:
            return LagStatus.OK
        if all(b.offset == a.offset for a, b in pairs):
            return LagStatus.STALL
        if all(b.lag >= a.lag for a, b in pairs):
            return LagStatus.WARN
        return LagStatus.OK

    @staticmethod
    def _lag_seconds(state: _Partition, latest: LagPoint, now: float) -> float:
        if latest.lag == 0:
            return 0.0
        offset = latest.offset
        lower: float | None = None
        upper: float | None = None
        for index, (log_end, seen, seen_lower) in enumerate(state.log_end_marks):
            if log_end > offset:
                upper = seen
                # The observation before this mark saw the previous mark's log end <= offset.
                lower = seen_lower if index > 0 else None
                break
        if upper is None:  # only a fresher log end passed to evaluate() knows this record
            upper = now
        produced = upper
        if state.last_record is not None and state.last_record[0] < offset:
            stamp = state.last_record[1]
            produced = min(max(stamp, lower), upper) if lower is not None else min(stamp, upper)
        return round(max(now - produced, 0.0), 3)
