"""A topic recreated under a trainer's checkpoint: nothing is skipped silently.

The embedded broker keeps topics in memory, so a fresh broker is a cluster where the topic was
deleted and created again. The service restarts with checkpoint offsets past the new log end;
it must learn every new record from the log start and say that it rewound: a log line, an
`offset_reset` event in the learning history and `streamfit_offset_resets_total`.
"""

from __future__ import annotations

import re

from service.broker import EmbeddedBroker, free_port
from tests.reliability.probes import newest_manifest_entry
from tests.support import produce_synthetic, wait_for


def test_recreated_topic_is_learned_from_its_start_and_the_rewind_shows(topic, spawn, tmp_path):
    first = EmbeddedBroker(port=free_port())
    first.start()
    try:
        old = produce_synthetic(first.bootstrap, topic, rows=6000, partitions=2, seed=1)
        service = spawn(bootstrap=first.bootstrap).start()
        service.wait_trained(old)
        assert service.terminate() == 0
    finally:
        first.stop()
    assert newest_manifest_entry(tmp_path / "a")["offsets"] == {
        f"{topic}:0": 3000,
        f"{topic}:1": 3000,
    }

    second = EmbeddedBroker(port=free_port())  # the topic is gone: "recreated" below
    second.start()
    try:
        new = produce_synthetic(second.bootstrap, topic, rows=4000, partitions=2, seed=2)
        again = spawn(bootstrap=second.bootstrap).start()
        model = again.wait_trained(old + new)
        assert model["samples_trained"] == old + new, "every new record learned once"
        wait_for(lambda: again.get("/lag")["total_lag"] == 0, 30, what="lag back to 0")
        lag = again.get("/lag")
        assert {(p["partition"], p["position"]) for p in lag["partitions"]} == {
            (0, 2000),
            (1, 2000),
        }

        metrics = again.get_text("/metrics")
        for partition in (0, 1):
            pattern = (
                rf'streamfit_offset_resets_total\{{partition="{partition}",reason="replaced",'
                rf'topic="{re.escape(topic)}"\}} 1\.0'
            )
            assert re.search(pattern, metrics), pattern
        events = [e for e in again.get("/history")["events"] if e["kind"] == "offset_reset"]
        assert sorted((e["partition"], e["from_offset"], e["to_offset"]) for e in events) == [
            (0, 3000, 0),
            (1, 3000, 0),
        ]
        assert all(e["reason"] == "replaced" for e in events)
        assert "the log was replaced" in again.logs()
        assert again.terminate() == 0
    finally:
        second.stop()
