"""Consumer-group handovers between trainers with separate models, and checkpoint fallback.

Two services in one group, each with its own checkpoint directory, split the partitions of
one topic. Each record must be learned by exactly one of the two models: the samples both
models have learned add up to the records produced, and the group's committed offsets reach
the end of every partition. A member resumes a partition after everything learned, by its
own model (checkpoint offsets) or by the group (committed offsets).
"""

from __future__ import annotations

import threading
import time

from tests.reliability.probes import (
    FallbackSkipsRecords,
    committed_and_positions,
    newest_manifest_entry,
)
from tests.support import ServiceProcess, produce_synthetic, wait_for

PARTITIONS = 4


def _assigned(service: ServiceProcess) -> set[int]:
    return set(committed_and_positions(service))


def _learned(service: ServiceProcess) -> int:
    return int(service.get("/model")["samples_trained"])


def _final_samples(service: ServiceProcess, directory) -> int:
    """Samples learned by a stopped member: its newest checkpoint (written on SIGTERM)."""
    return int(newest_manifest_entry(directory)["samples_trained"])


class _Stream:
    """Produces `chunks` chunks of `rows` records in a background thread, ~`pause_s` apart."""

    def __init__(self, bootstrap: str, topic: str, chunks: int, rows: int, pause_s: float) -> None:
        self.produced = 0
        self._args = (bootstrap, topic, chunks, rows, pause_s)
        self._thread = threading.Thread(target=self._run, name="stream")
        self.error: BaseException | None = None

    def _run(self) -> None:
        bootstrap, topic, chunks, rows, pause_s = self._args
        try:
            for chunk in range(chunks):
                self.produced += produce_synthetic(
                    bootstrap, topic, rows=rows, partitions=PARTITIONS, seed=100 + chunk
                )
                time.sleep(pause_s)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> _Stream:
        self._thread.start()
        return self

    def join(self) -> int:
        self._thread.join(timeout=300)
        assert self.error is None, self.error
        return self.produced


def test_handover_back_and_forth_learns_each_record_once(broker, topic, spawn, tmp_path):
    """A alone; B joins; A leaves mid-stream (SIGTERM); A comes back with its old checkpoint.

    A's checkpoint still holds offsets for every partition from before B joined; when A gets
    some of them back, B has learned past those offsets, so resuming at A's checkpoint would
    learn B's records a second time.
    """
    settings = {"batch_size": 64, "checkpoint_interval_s": 0.5}
    total = produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=PARTITIONS)
    a = spawn(name="a", **settings).start()
    a.wait_trained(total)
    wait_for(lambda: len(_assigned(a)) == PARTITIONS, 30, what="A owns every partition")

    b = spawn(name="b", **settings).start()
    wait_for(
        lambda: _assigned(a) and _assigned(b) and not _assigned(a) & _assigned(b),
        b.join_timeout_s,
        what="A and B split the partitions",
    )
    stream = _Stream(broker.bootstrap, topic, chunks=8, rows=800, pause_s=0.5).start()
    wait_for(lambda: _learned(b) > 0 and _learned(a) > total, 90, what="both learning")
    assert a.terminate() == 0, "A leaves mid-stream"
    a_first_life = _final_samples(a, tmp_path / "a")
    wait_for(
        lambda: len(_assigned(b)) == PARTITIONS,
        b.join_timeout_s,
        what="B takes over every partition",
    )

    total += stream.join()
    a_again = spawn(name="a", **settings).start()
    assert _learned(a_again) == a_first_life, "A resumes from its SIGTERM checkpoint"
    wait_for(
        lambda: _assigned(a_again) and not _assigned(a_again) & _assigned(b),
        a_again.join_timeout_s,
        what="A gets partitions back",
    )
    total += produce_synthetic(broker.bootstrap, topic, rows=1200, partitions=PARTITIONS, seed=9)

    per_partition = total // PARTITIONS

    def settled() -> bool:
        rows = {**committed_and_positions(a_again), **committed_and_positions(b)}
        return len(rows) == PARTITIONS and all(c == p == per_partition for c, p in rows.values())

    # B may still be rejoining after A took partitions back: a join, then the learning.
    wait_for(
        settled,
        b.join_timeout_s + 60,
        what=f"every partition learned and committed at {per_partition}",
    )
    learned = {"A": _learned(a_again), "B": _learned(b)}
    assert sum(learned.values()) == total, (
        f"records learned by the two models {learned} != records produced {total}: "
        + ("some were learned twice" if sum(learned.values()) > total else "some were skipped")
    )


def test_fallback_to_an_older_checkpoint_relearns_what_it_lost(broker, topic, spawn, tmp_path):
    """SPEC: on start, restore the newest *valid* checkpoint and seek to its offsets."""
    produce_synthetic(broker.bootstrap, topic, rows=900, partitions=3)
    service = spawn(checkpoint_interval_s=0.5).start()
    service.wait_trained(900)
    wait_for(
        lambda: all(c == 300 for c, _ in committed_and_positions(service).values()),
        30,
        what="a checkpoint of 900 committed",
    )
    produce_synthetic(broker.bootstrap, topic, rows=600, partitions=3, seed=4)
    service.wait_trained(1500)
    wait_for(
        lambda: all(c == 500 for c, _ in committed_and_positions(service).values()),
        30,
        what="everything committed",
    )
    assert service.terminate() == 0

    directory = tmp_path / "a"
    entries = sorted(
        (int(p.name[5:15]), p) for p in directory.glob("ckpt-*.npz")
    )  # ckpt-<10 digits>.npz
    newest_version, newest = entries[-1]
    assert newest_manifest_entry(directory)["samples_trained"] == 1500
    payload = bytearray(newest.read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # bit rot: the checksum no longer matches
    newest.write_bytes(bytes(payload))

    again = spawn().start()
    restored = again.get("/model")
    assert restored["checkpoint"]["version"] < newest_version, "fell back to an older version"
    older = restored["samples_trained"]
    assert 900 <= older < 1500
    assert sum(restored["checkpoint"]["offsets"].values()) == older
    try:
        again.wait_trained(1500, learn_s=10)
    except AssertionError as exc:
        raise FallbackSkipsRecords(
            f"restored a checkpoint with {older} samples and never learned the records "
            f"after its offsets: {exc}"
        ) from None
