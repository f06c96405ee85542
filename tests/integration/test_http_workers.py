"""HTTP worker processes (`STREAMFIT_HTTP_WORKERS`) on the real broker: predictions from the
shared snapshot equal the trainer's own, everything else answered by the trainer's app, the
workers' requests in its /metrics, a pin followed, a crashed worker replaced, and no orphan
left holding the port after the trainer is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.synthetic import synthetic_susy
from tests.support import ServiceProcess, produce_synthetic, wait_for

API_KEY = "workers-admin-key"
ADMIN = {"authorization": f"Bearer {API_KEY}"}
X, _ = synthetic_susy(64, seed=5)
PREDICT = "/v1/models/susy:predict"


def worker_pids(service: ServiceProcess) -> list[int]:
    """The service's `http-worker` children (from /proc)."""
    assert service.process is not None
    parent = service.process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"http-worker" in command:
            pids.append(int(entry.name))
    return sorted(pids)


def counter(service: ServiceProcess, line_start: str) -> float:
    """The sum of the /metrics samples whose line starts with `line_start`."""
    total = 0.0
    for line in service.get_text("/metrics").splitlines():
        if line.startswith(line_start):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (not yet reaped by its parent) no longer serves anything.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def trained(service_factory: Any, broker: Any, topic: str) -> ServiceProcess:
    produce_synthetic(broker.bootstrap, topic, rows=3000, partitions=2, seed=3)
    service = service_factory(http_workers=2, api_key=API_KEY, checkpoint_interval_s=0.5).start()
    service.wait_trained(3000)
    wait_for(lambda: len(worker_pids(service)) == 2, 30, what="two HTTP workers")
    return service


def test_workers_serve_the_trainers_model_and_forward_everything_else(
    trained: ServiceProcess,
) -> None:
    service = trained
    # The label route `stable` is answered by the trainer's own process, from the same
    # served snapshot: the workers' answer must be the same numbers and version. A
    # checkpoint may still land after the last record is learned (and raise the version),
    # so the two answers and `/model` are read together until they agree.
    stable = "/v1/models/susy/labels/stable:predict"

    def agreeing() -> tuple[dict[str, Any], dict[str, Any]] | None:
        status, mine = service.request("POST", stable, {"instances": X.tolist()})
        assert status == 200, mine
        status, theirs = service.request("POST", PREDICT, {"instances": X.tolist()})
        assert status == 200, theirs
        served = service.get("/model")["served_version"]
        versions = (mine["model_version"], theirs["model_version"], served)
        return (mine, theirs) if len(set(versions)) == 1 else None

    mine, theirs = wait_for(agreeing, 10, what="workers and trainer on the served version")
    np.testing.assert_allclose(theirs["predictions"], mine["predictions"], rtol=1e-6, atol=1e-7)

    status, v2 = service.request(
        "POST",
        "/v2/models/susy/infer",
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 18],
                    "datatype": "FP32",
                    "data": X[:2].reshape(-1).tolist(),
                }
            ]
        },  # fmt: skip
    )
    assert status == 200, v2
    np.testing.assert_allclose(v2["outputs"][0]["data"], mine["predictions"][:2], rtol=1e-6)

    # Bad requests: the same 4xx with a reason as from the trainer's own app.
    status, body = service.request("POST", PREDICT, {"instances": [[1.0, 2.0]]})
    assert status == 422 and "18" in body["error"]
    one = {"instances": X[:1].tolist()}
    status, body = service.request("POST", "/v1/models/other:predict", one)
    assert status == 404 and "other" in body["error"]
    plain = {"content-type": "text/plain"}
    status, body = service.request("POST", PREDICT, raw=b"x" * 10, headers=plain)
    assert status == 415

    # Forwarded: information, health, admin, unknown routes.
    assert service.get("/lag")["partitions"]
    assert service.status("/readyz") == 200 and service.status("/healthz") == 200
    assert service.status("/no/such/route") == 404
    assert service.request("POST", "/admin/checkpoint")[0] == 401  # the admin key is checked
    status, body = service.request("POST", "/admin/checkpoint", headers=ADMIN)
    assert status == 200, body
    assert service.status("/dashboard") == 200


def test_the_trainers_metrics_count_the_workers_requests(trained: ServiceProcess) -> None:
    service = trained
    route = 'streamfit_http_requests_total{method="POST",route="/v1/models/{name}:predict"'
    computed = "streamfit_prediction_duration_seconds_count"
    before, computed_before = counter(service, route), counter(service, computed)
    for _ in range(25):
        assert service.request("POST", PREDICT, {"instances": X[:1].tolist()})[0] == 200
    assert counter(service, route) - before == 25
    assert 1 <= counter(service, computed) - computed_before <= 25  # micro-batched
    # Forwarded requests are counted once, under their own route, by the trainer's app.
    lag = 'streamfit_http_requests_total{method="GET",route="/lag",status="200"}'
    lag_before = counter(service, lag)
    service.get("/lag")
    assert counter(service, lag) - lag_before == 1


def test_workers_follow_a_pin(trained: ServiceProcess, broker: Any, topic: str) -> None:
    service = trained
    service.request("POST", "/admin/checkpoint", headers=ADMIN)
    produce_synthetic(broker.bootstrap, topic, rows=500, partitions=2, seed=4)
    service.wait_trained(3500)
    assert service.request("POST", "/admin/checkpoint", headers=ADMIN)[0] == 200
    status, body = service.request("GET", "/admin/versions", headers=ADMIN)
    assert status == 200, body
    versions = sorted(int(v["version"]) for v in body["versions"])
    assert len(versions) >= 2, versions
    oldest = versions[0]
    status, body = service.request("POST", f"/admin/pin/{oldest}", headers=ADMIN)
    assert status == 200, body
    wait_for(
        lambda: (
            service.request("POST", PREDICT, {"instances": X[:1].tolist()})[1]["model_version"]
            == oldest
        ),
        10,
        what=f"workers serving pinned version {oldest}",
    )


def test_a_crashed_worker_is_replaced_and_none_outlives_the_trainer(
    trained: ServiceProcess,
) -> None:
    service = trained
    first = worker_pids(service)
    os.kill(first[0], signal.SIGKILL)
    wait_for(
        lambda: len(pids := worker_pids(service)) == 2 and first[0] not in pids,
        30,
        what="the worker replaced",
    )
    # Predictions keep being answered meanwhile and after (the other worker holds the port).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert service.request("POST", PREDICT, {"instances": X[:1].tolist()})[0] == 200

    workers = worker_pids(service)
    service.kill()
    wait_for(lambda: all(pid_gone(p) for p in workers), 10, what="workers gone with the trainer")
    # The port is free again: a restart on it serves.
    service.start()
    assert service.request("POST", PREDICT, {"instances": X[:1].tolist()})[0] == 200
    assert service.terminate() == 0
    wait_for(lambda: not worker_pids(service), 10, what="workers stopped with the trainer")
