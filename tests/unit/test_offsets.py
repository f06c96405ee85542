"""The offset owner and the resume rule, as a table of cases (no broker)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from service.kafka.reading import LogBounds
from service.training.offsets import PartitionOffsets, ResetReason, Resume, resume_position

TP = TopicPartition("t", 0)

# (case, learned, committed, own commits, log bounds) -> where learning resumes
CASES = [
    ("first start: nothing known, log unknown", None, None, (), None, Resume(None)),
    (
        "first start: nothing known, start at the log start",
        None,
        None,
        (),
        LogBounds(40, 90),
        Resume(40),
    ),
    ("restart at the log end", 300, 300, {300}, LogBounds(0, 300), Resume(300)),
    # Tansu's ListOffsets(latest) would say 297 here (the last batch's base offset): the
    # bounds hold the high watermark, so a checkpoint inside the last batch is no rewind.
    ("restart inside what was the last batch", 299, 299, {299}, LogBounds(0, 300), Resume(299)),
    ("restart behind the log end: learn the rest", 250, 250, {250}, LogBounds(0, 300), Resume(250)),
    (
        "commit older than the checkpoint (commit failed)",
        300,
        200,
        {300},
        LogBounds(0, 400),
        Resume(300),
    ),
    ("another member learned further", 300, 500, {300}, LogBounds(0, 600), Resume(500)),
    (
        "own newer checkpoint lost (corrupt): relearn",
        300,
        500,
        {300, 500},
        LogBounds(0, 600),
        Resume(300),
    ),
    (
        "own checkpoint lost and none restored: from the log start",
        None,
        500,
        {500},
        LogBounds(0, 600),
        Resume(0),
    ),
    ("group offset only (new model, group known)", None, 120, (), LogBounds(0, 600), Resume(120)),
    (
        "topic recreated: offset above the log end",
        3000,
        3000,
        {3000},
        LogBounds(0, 2000),
        Resume(0, ResetReason.REPLACED, stale=3000),
    ),
    (
        "topic recreated, log not yet started at 0",
        3000,
        None,
        (),
        LogBounds(5, 10),
        Resume(5, ResetReason.REPLACED, stale=3000),
    ),
    (
        "recreated and empty",
        3000,
        3000,
        (),
        LogBounds(0, 0),
        Resume(0, ResetReason.REPLACED, stale=3000),
    ),
    (
        "retention deleted unlearned records",
        100,
        100,
        {100},
        LogBounds(250, 900),
        Resume(250, ResetReason.EXPIRED, stale=100, lost=150),
    ),
    ("checkpoint exactly at the log start", 250, 250, (), LogBounds(250, 900), Resume(250)),
    # Recreated and already grown past the old offset: indistinguishable from a normal
    # restart without topic ids (docs/RELIABILITY.md).
    ("recreated and grown past the old offset", 300, 300, (), LogBounds(0, 5000), Resume(300)),
]


@pytest.mark.parametrize(
    ("learned", "committed", "own", "bounds", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_resume_rule(learned, committed, own, bounds, expected) -> None:
    assert resume_position(learned, committed, own, bounds) == expected


def test_positions_advance_only_when_learned_and_round_trip_through_a_checkpoint() -> None:
    book = PartitionOffsets()
    book.restore({"t:0": 100, "t:1": 7})
    assert book.position(TP) == 100 and not book.changed_since_checkpoint
    book.learned(TP, next_offset=356, timestamp_ms=1_700_000_000_000)
    assert book.position(TP) == 356 and book.changed_since_checkpoint
    assert book.as_checkpoint() == {"t:0": 356, "t:1": 7}
    assert book.take_last_timestamp(TP) == 1_700_000_000_000
    assert book.take_last_timestamp(TP) is None, "a timestamp is handed out once"
    book.checkpointed()
    assert not book.changed_since_checkpoint
    copy = book.learned_offsets()
    copy[TP] = 0
    assert book.position(TP) == 356, "learned_offsets is a copy"


def test_resume_records_the_group_offset_and_marks_a_reset_for_the_next_checkpoint() -> None:
    book = PartitionOffsets()
    book.restore({"t:0": 3000})
    resume = book.resume(TP, committed=3000, own_commits={3000}, bounds=LogBounds(0, 1200))
    assert resume.reset is ResetReason.REPLACED
    assert book.position(TP) == 0 and book.committed(TP) == 3000
    assert book.changed_since_checkpoint, "the rewound position must reach a checkpoint"
    book.note_committed({TP: 1200})
    assert book.committed(TP) == 1200


def test_a_normal_resume_changes_nothing_to_checkpoint() -> None:
    book = PartitionOffsets()
    book.restore({"t:0": 300})
    assert book.resume(TP, committed=300, own_commits={300}, bounds=LogBounds(0, 300)).offset == 300
    assert not book.changed_since_checkpoint
