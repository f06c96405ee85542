"""Offsets: where each partition stands, and the rule for where an assigned partition resumes.

`PartitionOffsets` is the one owner of per-partition positions: the next offset the model will
learn (advanced only after a batch is learned), the group's committed offset, the timestamp of
the last record learned (for lag in seconds), and whether anything was learned since the last
checkpoint. `resume_position` is the resume rule, a pure function of what the model learned,
what the group committed and where the log starts and ends now.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from service.checkpoints import offset_key, parse_offset_key
from service.kafka.reading import LogBounds


class ResetReason(enum.StrEnum):
    """Why a partition's position did not fit its log (label of streamfit_offset_resets_total)."""

    REPLACED = "replaced"  # beyond the log end: topic recreated (or its log truncated)
    EXPIRED = "expired"  # before the log start: retention deleted records not yet learned


@dataclass(frozen=True)
class Resume:
    """Where an assigned partition starts. `offset` None: nothing known, start at the log start.

    With a `reset`, `stale` is the position that no longer fit the log and `lost` counts the
    records deleted before they were learned.
    """

    offset: int | None
    reset: ResetReason | None = None
    stale: int | None = None
    lost: int = 0


def resume_position(
    learned: int | None,
    committed: int | None,
    own_commits: Collection[int] = (),
    bounds: LogBounds | None = None,
) -> Resume:
    """Where learning resumes on a partition just assigned.

    `learned` is this model's checkpoint offset (what it has learned); `committed` the group's
    committed offset (what some member learned and checkpointed: commits follow checkpoints);
    `own_commits` the offsets this model's retained checkpoints recorded for the partition;
    `bounds` the log's start and end now (None: unknown, trust the offsets).

    1. The larger of learned and committed: a single trainer resumes at its checkpoint, and
       after a handover no record is learned by two members...
    2. ...unless the committed offset is ahead of the model and one of its own checkpoints
       recorded it: that checkpoint is lost (corrupt), so relearn what it held.
    3. A position beyond the log end: the log was replaced (recreated topic, or truncated);
       start at the log start. A position before the log start: retention deleted records
       before they were learned; start at the log start and count them.

    >>> resume_position(learned=300, committed=280)
    Resume(offset=300, reset=None, stale=None, lost=0)
    >>> resume_position(learned=300, committed=500)  # another member learned up to 500
    Resume(offset=500, reset=None, stale=None, lost=0)
    >>> resume_position(learned=300, committed=500, own_commits={300, 500})  # own, lost
    Resume(offset=300, reset=None, stale=None, lost=0)
    >>> resume_position(learned=3000, committed=3000, bounds=LogBounds(0, 2000))
    Resume(offset=0, reset=<ResetReason.REPLACED: 'replaced'>, stale=3000, lost=0)
    >>> resume_position(learned=100, committed=None, bounds=LogBounds(250, 900))
    Resume(offset=250, reset=<ResetReason.EXPIRED: 'expired'>, stale=100, lost=150)
    """
    if (
        committed is not None
        and committed in own_commits
        and (learned is None or committed > learned)
    ):
        committed = None
    known = [offset for offset in (learned, committed) if offset is not None]
    if not known:
        return Resume(None if bounds is None else bounds.start)
    position = max(known)
    if bounds is None:
        return Resume(position)
    if position > bounds.end:
        return Resume(bounds.start, ResetReason.REPLACED, stale=position)
    if position < bounds.start:
        return Resume(
            bounds.start, ResetReason.EXPIRED, stale=position, lost=bounds.start - position
        )
    return Resume(position)


class PartitionOffsets:
    """Per-partition positions of one trainer; the only writer of them.

    >>> book = PartitionOffsets()
    >>> tp = TopicPartition("t", 0)
    >>> book.resume(tp, committed=None, bounds=LogBounds(0, 10)).offset
    0
    >>> book.learned(tp, next_offset=4, timestamp_ms=1000)
    >>> book.position(tp), book.changed_since_checkpoint, book.as_checkpoint()
    (4, True, {'t:0': 4})
    """

    def __init__(self) -> None:
        self._learned: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._last_timestamp: dict[TopicPartition, int] = {}
        self._changed = False

    # -- from a checkpoint ------------------------------------------------------------------

    def restore(self, checkpoint_offsets: Mapping[str, int]) -> None:
        """Positions as a checkpoint recorded them (`topic:partition` -> next offset)."""
        self._learned = {
            TopicPartition(*parse_offset_key(key)): int(offset)
            for key, offset in checkpoint_offsets.items()
        }
        self._changed = False

    def as_checkpoint(self) -> dict[str, int]:
        """Positions in the form a checkpoint holds them."""
        return {offset_key(tp.topic, tp.partition): o for tp, o in self._learned.items()}

    def learned_offsets(self) -> dict[TopicPartition, int]:
        """A copy of the next offset to learn, per partition."""
        return dict(self._learned)

    @property
    def changed_since_checkpoint(self) -> bool:
        return self._changed

    def checkpointed(self) -> None:
        """A checkpoint now holds every position."""
        self._changed = False

    def not_checkpointed(self) -> None:
        """The model changed without a position moving (rollback), or a checkpoint failed."""
        self._changed = True

    # -- while learning ---------------------------------------------------------------------

    def learned(self, tp: TopicPartition, next_offset: int, timestamp_ms: int | None) -> None:
        """The model has learned every record of `tp` before `next_offset`."""
        self._learned[tp] = next_offset
        if timestamp_ms is not None:
            self._last_timestamp[tp] = timestamp_ms
        self._changed = True

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset the model will learn on `tp` (None if never known)."""
        return self._learned.get(tp)

    def take_last_timestamp(self, tp: TopicPartition) -> int | None:
        """The timestamp (ms) of the last record learned since the last call, once."""
        return self._last_timestamp.pop(tp, None)

    # -- the group ----------------------------------------------------------------------------

    def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def note_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The group's offsets are now `offsets` (a commit went through)."""
        self._committed.update(offsets)

    def resume(
        self,
        tp: TopicPartition,
        committed: int | None,
        own_commits: Collection[int] = (),
        bounds: LogBounds | None = None,
    ) -> Resume:
        """Apply the resume rule to an assigned partition; its position becomes the result."""
        if committed is not None:
            self._committed[tp] = committed
        resume = resume_position(self._learned.get(tp), committed, own_commits, bounds)
        if resume.offset is not None:
            self._learned[tp] = resume.offset
        if resume.reset is not None:
            self._changed = True  # the next checkpoint records the new position
        return resume
