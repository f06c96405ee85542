"""Broker outages: the network to Kafka cut, the broker frozen, commits failing.

The service runs against a broker of its own that advertises a fault proxy (tests/reliability/
proxy.py), so cutting the proxy is an outage for the service's Kafka clients only: the test's
producer keeps writing through it, and records produced during the outage must be learned too.
Through every outage the service stays up, serves predictions and stays ready (SPEC: "a Kafka
outage does not make the pod unready for serving; it shows in /readyz's body and in metrics");
afterwards it reconnects by itself and the model has learned every record exactly once.
"""

from __future__ import annotations

import time

from tests.reliability.probes import (
    CommitNotRetried,
    Observation,
    OutageNotVisible,
    committed_and_positions,
    observe,
)
from tests.reliability.proxy import OFFSET_COMMIT, client_id_prefix
from tests.support import ServiceProcess, produce_synthetic, wait_for

SERVICE_CLIENTS = client_id_prefix("streamfit")
OUTAGE_S = 8.0


def _watch(service: ServiceProcess, seconds: float, during: list[Observation], action=None) -> None:
    """Observe the service every ~0.5 s for `seconds`; run `action` once, 2 s in."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        during.append(observe(service, started))
        if action is not None and time.monotonic() - started > 2:
            action()
            action = None
        time.sleep(0.5)


def _assert_served_throughout(service: ServiceProcess, pid: int, seen: list[Observation]) -> None:
    assert seen, "nothing observed"
    assert service.process is not None and service.process.poll() is None, "service died"
    assert service.process.pid == pid, "service was restarted"
    bad = [o for o in seen if (o.healthz, o.readyz, o.predict) != (200, 200, 200)]
    assert not bad, f"liveness, readiness or predictions failed during the outage: {bad}"


def _assert_recovered_exactly(service: ServiceProcess, total: int, partitions: int) -> None:
    """Learns every record once, commits them all, and reports Kafka connected again."""
    model = service.wait_trained(total, learn_s=180)
    assert model["samples_trained"] == total
    per_partition = total // partitions
    wait_for(
        lambda: (
            all(c == p == per_partition for c, p in committed_and_positions(service).values())
            and len(committed_and_positions(service)) == partitions
        ),
        60,
        what=f"every partition committed at {per_partition}",
    )
    status, ready = service.request("GET", "/readyz")
    assert status == 200 and ready["trainer"]["kafka_connected"] is True, ready


def _raise_unless_visible(seen: list[Observation]) -> None:
    in_body = [o for o in seen if o.shows_outage]
    in_metric = [o for o in seen if o.connected_metric == 0]
    if not in_body or not in_metric:
        raise OutageNotVisible(
            "the outage never showed: /readyz trainer kafka_connected/last_error "
            f"{[(o.at, o.kafka_connected, o.last_error) for o in seen]}, "
            f"streamfit_kafka_connected {[o.connected_metric for o in seen]}"
        )


def _checkpoint_with_failed_commits(broker, spawn, topic, settings) -> ServiceProcess:
    """A service that learned 1200 records over 3 partitions, checkpointed all of them, and
    could commit only the first 900 (300 per partition)."""
    produce_synthetic(broker.bootstrap, topic, rows=900, partitions=3)
    service = spawn(broker.advertised, **settings).start()
    service.wait_trained(900)
    wait_for(
        lambda: all(c == 300 for c, _ in committed_and_positions(service).values()),
        60,
        what="first commit",
    )
    written_before = service.logs().count('"checkpoint written"')
    broker.proxy.fail_requests({OFFSET_COMMIT}, SERVICE_CLIENTS)
    produce_synthetic(broker.bootstrap, topic, rows=300, partitions=3, seed=3)
    service.wait_trained(1200, learn_s=60)
    learned = {f"{topic}:{p}": 400 for p in range(3)}
    wait_for(
        lambda: service.get("/model")["checkpoint"]["offsets"] == learned,
        30,
        what="a checkpoint of everything learned",
    )

    def every_commit_since_the_fault_failed() -> bool:
        logs = service.logs()
        written = logs.count('"checkpoint written"') - written_before
        return 0 < written <= logs.count('"offset commit failed"')

    # aiokafka retries each commit until the trainer's 10 s limit gives up on it.
    wait_for(every_commit_since_the_fault_failed, 90, what="the commits to fail")
    assert all(c == 300 for c, _ in committed_and_positions(service).values())
    return service


def test_network_outage_keeps_serving_and_loses_nothing(faulty_broker, spawn, topic):
    broker = faulty_broker
    total = produce_synthetic(broker.bootstrap, topic, rows=3000, partitions=3)
    service = spawn(broker.advertised, batch_size=64, checkpoint_interval_s=0.5).start()
    wait_for(
        lambda: service.get("/model")["samples_trained"] > 0,
        service.join_timeout_s + 30,
        what="training",
    )
    assert service.process is not None
    pid = service.process.pid

    assert broker.proxy.cut(SERVICE_CLIENTS) >= 1, "the service had no connection to cut"
    seen: list[Observation] = []
    produced_during: list[int] = []
    try:
        _watch(
            service,
            OUTAGE_S,
            seen,
            lambda: produced_during.append(
                produce_synthetic(broker.bootstrap, topic, rows=900, partitions=3, seed=1)
            ),
        )
    finally:
        broker.proxy.restore()
    assert produced_during == [900], "the test's own producer must get through the proxy"
    total += produced_during[0]

    _assert_served_throughout(service, pid, seen)
    _assert_recovered_exactly(service, total, partitions=3)
    _raise_unless_visible(seen)


def test_frozen_broker_keeps_serving_and_loses_nothing(faulty_broker, spawn, topic):
    broker = faulty_broker
    total = produce_synthetic(broker.bootstrap, topic, rows=6000, partitions=3)
    service = spawn(broker.advertised, batch_size=64, checkpoint_interval_s=0.5).start()
    wait_for(
        lambda: service.get("/model")["samples_trained"] > 0,
        service.join_timeout_s + 30,
        what="training",
    )
    assert service.process is not None
    pid = service.process.pid

    seen: list[Observation] = []
    broker.pause()
    try:
        _watch(service, OUTAGE_S, seen)
    finally:
        broker.resume()
    total += produce_synthetic(broker.bootstrap, topic, rows=900, partitions=3, seed=2)

    _assert_served_throughout(service, pid, seen)
    _assert_recovered_exactly(service, total, partitions=3)
    _raise_unless_visible(seen)


def test_failed_commit_is_retried_when_the_stream_is_idle(faulty_broker, spawn, topic):
    broker = faulty_broker
    service = _checkpoint_with_failed_commits(broker, spawn, topic, {"checkpoint_interval_s": 0.5})
    broker.proxy.restore()

    # Learned and checkpointed, and Kafka is back: the group's offsets should follow.
    assert service.get("/model")["samples_trained"] == 1200
    try:
        wait_for(
            lambda: all(c == 400 for c, _ in committed_and_positions(service).values()),
            10,
            what="committed offsets to catch up with the checkpoint",
        )
    except AssertionError as exc:
        raise CommitNotRetried(str(exc)) from None


def test_restart_resumes_at_the_checkpoint_not_at_the_commit(faulty_broker, spawn, topic):
    """kill -9 after a checkpoint whose commit failed: the restart must not learn it again.

    Regression test: on_partitions_assigned runs inside consumer.start() (subscribe() comes
    first), and _on_assigned used to return early there because self._consumer was not set
    yet, so a fresh process resumed at the group's committed offsets, not at its checkpoint.
    """
    broker = faulty_broker
    service = _checkpoint_with_failed_commits(broker, spawn, topic, {"checkpoint_interval_s": 0.5})
    service.kill()
    broker.proxy.restore()

    again = spawn(broker.advertised, checkpoint_interval_s=0.5).start()
    assert again.get("/model")["samples_trained"] == 1200, "restored the newest checkpoint"
    wait_for(
        lambda: len(committed_and_positions(again)) == 3, again.join_timeout_s, what="assignment"
    )
    time.sleep(5)  # time to fetch and learn anything it would learn again
    learned = again.get("/model")["samples_trained"]
    if learned != 1200:
        raise AssertionError(
            f"the checkpoint held 1200 samples at offsets 400/partition, the group had "
            f"committed 300/partition; after the restart the model has learned {learned}"
        )
    produce_synthetic(broker.bootstrap, topic, rows=300, partitions=3, seed=4)
    again.wait_trained(1500)
