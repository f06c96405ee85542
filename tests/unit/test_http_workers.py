"""The pieces of the HTTP workers without processes of the service: how many, the snapshot
handed through a file, and the trainer's /metrics with a worker's metrics summed in."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.checkpoints import Checkpoint
from service.model.inputs import InputSpec
from service.model.resolve import portable_config
from service.model.task import Task
from service.serving import workers
from service.serving.shared import (
    OWNER,
    SnapshotReader,
    SnapshotWriter,
    private_directory,
)
from service.serving.snapshot import (
    SnapshotHolder,
    build_snapshot,
    portable,
    snapshot_from_checkpoint,
    snapshot_from_portable,
)
from service.settings import Settings, load_settings
from tests.unit.conftest import servable_state

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("settings", "cpus", "expected"),
    [
        ({}, 1, 0),
        ({}, 2, 1),
        ({}, 3, 1),
        ({}, 16, 8),
        ({"http_workers": 3}, 2, 3),
        ({"http_workers": 0}, 16, 0),
        ({"role": "predictor"}, 16, 0),
        ({"role": "predictor", "http_workers": 2}, 16, 0),
        ({"labels_topic": "labels"}, 16, 0),
    ],
)
def test_worker_count(
    settings: dict[str, object], cpus: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "available_cpus", lambda: cpus)
    assert workers.worker_count(Settings(**settings)) == expected  # type: ignore[arg-type]


def test_explicit_workers_with_delayed_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="LABELS_TOPIC"):
        Settings(http_workers=2, labels_topic="labels")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"model": "linear"},
        {"model_arch": "linear"},
        {"model": "examples.fraud_named_json.model:build", "features": "a,b", "label_field": "y"},
        {"predict_api_keys": "k1,k2", "api_key": "admin", "http_workers": "2"},
        {"task": "multiclass", "classes": "x,y,z", "max_request_bytes": "5000"},
    ],
)
def test_a_worker_reads_the_settings_the_trainer_has(
    settings: dict[str, str], clean_env: None
) -> None:
    trainer = load_settings(**settings)
    assert workers.settings_from_trainer(workers.settings_for_worker(trainer)) == trainer


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_container_cpu_limit_bounds_the_cpus(
    files: dict[str, str], expected: float | None, tmp_path: Path
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert workers.cgroup_quota(tmp_path) == expected


def test_the_portable_form_rebuilds_the_same_model() -> None:
    x = np.random.default_rng(1).standard_normal((9, 18)).astype(np.float32)
    dense = snapshot_from_checkpoint(Checkpoint(version=4, state=servable_state(), offsets={}))
    again = snapshot_from_portable(portable(dense))
    assert (again.version, again.samples_trained, again.task) == (4, 1000, dense.task)
    np.testing.assert_array_equal(again.predict(x), dense.predict(x))

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="elu"), keras.layers.Dense(3)]
    )
    inputs = InputSpec.positional(4)
    task = Task(kind="multiclass", classes=("a", "b", "c"))
    keras_path = build_snapshot(
        model.get_weights(), None, np.empty(0), np.empty(0), 2, 10, 1, task, inputs,
        portable_config(model), spec="pkg.mod:build",
    )  # fmt: skip
    again = snapshot_from_portable(portable(keras_path))
    assert again.runner is not None and again.spec == "pkg.mod:build" and again.task == task
    np.testing.assert_allclose(again.predict(x[:, :4]), keras_path.predict(x[:, :4]), rtol=1e-6)


def test_a_reader_loads_each_snapshot_the_writer_writes_once(tmp_path: Path) -> None:
    first = snapshot_from_checkpoint(Checkpoint(version=1, state=servable_state(), offsets={}))
    second = snapshot_from_checkpoint(
        Checkpoint(version=2, state=servable_state(seed=9), offsets={})
    )
    source, served = SnapshotHolder(), SnapshotHolder()
    writer, reader = SnapshotWriter(source, tmp_path), SnapshotReader(tmp_path, served)
    assert not reader.refresh() and served.current is None  # nothing written yet

    async def scenario() -> None:
        writer.start()
        source.publish(first)
        await _until(lambda: writer.written == 1)
        assert reader.refresh() and served.version == 1
        assert not reader.refresh()  # unchanged: not loaded again
        source.publish(second)
        await _until(lambda: writer.written == 2)
        await asyncio.sleep(0.02)
        assert writer.written == 2  # the same snapshot is not written twice
        await writer.stop()

    asyncio.run(scenario())
    assert reader.refresh() and served.version == 2
    x = np.ones((3, 18), np.float32)
    np.testing.assert_array_equal(served.current.predict(x), second.predict(x))  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.pickle"]  # no temp left


def test_a_worker_holds_the_served_model_before_it_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn accepts once the app's start-up returns: a worker started again while the
    other one serves must already hold the model, or a client it takes is answered 503."""
    from service.api.worker import create_worker_app

    SnapshotWriter(SnapshotHolder(), tmp_path).write(
        snapshot_from_checkpoint(Checkpoint(version=3, state=servable_state(), offsets={}))
    )

    async def never(self: SnapshotReader) -> None:  # only the start-up load may serve it
        await asyncio.Event().wait()

    monkeypatch.setattr(SnapshotReader, "follow", never)
    app = create_worker_app(Settings(), tmp_path, tmp_path / workers.CONTROL_SOCKET)
    body = json.dumps({"instances": np.ones((1, 18)).tolist()}).encode()

    async def scenario() -> tuple[int, dict[str, object]]:
        startup, shutdown = asyncio.Event(), asyncio.Event()

        async def receive() -> dict[str, str]:
            if not startup.is_set():
                startup.set()
                return {"type": "lifespan.startup"}
            await shutdown.wait()
            return {"type": "lifespan.shutdown"}

        started = asyncio.Event()

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        lifespan = asyncio.create_task(app({"type": "lifespan"}, receive, send))
        await asyncio.wait_for(started.wait(), 10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            answer = await client.post(
                f"/v1/models/{Settings().model_name}:predict",
                content=body,
                headers={"content-type": "application/json"},
            )
        shutdown.set()
        await asyncio.wait_for(lifespan, 10)
        return answer.status_code, answer.json()

    status, answer = asyncio.run(scenario())
    assert status == 200, answer
    assert len(answer["predictions"]) == 1  # type: ignore[arg-type]


async def _until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


WORKER = """
from service import metrics
metrics.HTTP_REQUESTS.labels("/v1/models/{name}:predict", "POST", "200").inc(7)
metrics.HTTP_REQUESTS.labels("/v2/models/{name}/infer", "POST", "200").inc(2)
metrics.HTTP_DURATION.labels("/v1/models/{name}:predict", "POST").observe(0.002)
metrics.PREDICTION_DURATION.observe(0.0003)
metrics.TRAIN_LOSS.set(123.0)  # not a worker family: must not show
"""


def test_a_killed_trainers_directory_is_removed_by_the_next_one(tmp_path: Path) -> None:
    # A trainer killed with SIGKILL leaves its directory; a live one's is kept.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    killed = private_directory(tmp_path)
    (killed / OWNER).write_text(gone.stdout)
    (killed / "snapshot.pickle").write_bytes(b"x" * 100)
    alive = private_directory(tmp_path)
    unrelated = tmp_path / "other-dir"
    unrelated.mkdir()
    # Without an owner file (an older version's): removed once untouched for an hour.
    old = tmp_path / "streamfit-old"
    old.mkdir()
    os.utime(old, (1.0, 1.0))
    recent = tmp_path / "streamfit-recent"
    recent.mkdir()

    mine = private_directory(tmp_path)

    assert not killed.exists() and not old.exists()
    assert alive.is_dir() and recent.is_dir() and unrelated.is_dir() and mine.is_dir()
    assert (mine / OWNER).read_text().strip() == str(os.getpid())
    assert oct(mine.stat().st_mode & 0o777) == oct(0o700)


def test_the_trainers_metrics_add_the_workers(tmp_path: Path) -> None:
    """A worker process records into multiprocess files; the trainer's exposition sums
    them into its own families, once each, and leaves every other family its own."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", WORKER], env=env, cwd=ROOT, check=True, timeout=60)
    route = ("/v1/models/{name}:predict", "POST", "200")
    metrics.HTTP_REQUESTS.labels(*route).inc(3)
    ours = _samples(metrics.exposition(None))
    text = metrics.exposition(tmp_path)
    summed = _samples(text)
    key = ("streamfit_http_requests_total", route)
    assert summed[key] == ours[key] + 7
    # The v2 route as the trainer's own registry has it so far (other tests in this process
    # may have answered it), plus the worker's 2.
    infer = ("streamfit_http_requests_total", ("/v2/models/{name}/infer", "POST", "200"))
    assert summed[infer] == ours.get(infer, 0.0) + 2
    count = ("streamfit_prediction_duration_seconds_count", ())
    assert summed[count] == ours[count] + 1
    assert summed[("streamfit_train_loss", ())] == ours[("streamfit_train_loss", ())]
    names = [f.name for f in text_string_to_metric_families(text.decode())]
    assert len(names) == len(set(names))  # one family each: Prometheus refuses duplicates


def _samples(text: bytes) -> dict[tuple[str, tuple[str, ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = sample.labels
            key = tuple(labels[k] for k in ("route", "method", "status") if k in labels)
            if "le" not in labels and not (set(labels) - {"route", "method", "status"}):
                out[(sample.name, key)] = sample.value
    return out


def test_a_worker_asks_for_a_short_time_slice() -> None:
    """In a process of its own (the setting is per thread and inherited): the scheduler's
    slice for the thread becomes the requested one, the nice value stays."""
    code = (
        "import os; from service.serving import workers; os.nice(3); "
        "print(workers.request_short_slice(0.0003)); "
        "print(open('/proc/self/sched').read()); print('nice', os.nice(0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    taken, details = out.split("\n", 1)
    if taken != "True":
        pytest.skip("this kernel does not take a time slice request (Linux 6.12 and later do)")
    fields = {
        key.strip(): value.strip()
        for key, value in (line.split(":", 1) for line in details.splitlines() if ":" in line)
    }
    assert int(fields["se.slice"]) == 300_000
    assert int(fields["policy"]) == 0
    assert "nice 3" in out


@pytest.mark.parametrize(
    ("settings", "started", "expected"),
    [
        ({"http_workers": 1}, 1, 10),
        ({"http_workers": 1, "trainer_nice": 5}, 1, 5),
        ({"http_workers": 0}, 0, 0),
        ({"http_workers": 2}, 0, 0),  # an app built without the workers its settings ask for
    ],
)
def test_the_trainer_yields_to_its_workers_only_when_it_has_some(
    settings: dict[str, int], started: int, expected: int
) -> None:
    assert workers.trainer_nice(Settings(**settings), started) == expected  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux")
def test_a_lowered_thread_leaves_the_event_loop_thread_as_it_was() -> None:
    code = (
        "import os, threading; from service.serving import workers; out = []\n"
        "nice = lambda: os.getpriority(os.PRIO_PROCESS, 0)\n"
        "def lowered():\n"
        "    out.append(workers.lower_this_thread(10)); out.append(nice())\n"
        "    child = threading.Thread(target=lambda: out.append(nice()))\n"
        "    child.start(); child.join()\n"
        "t = threading.Thread(target=lowered); t.start(); t.join()\n"
        "print(out, nice())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    base = os.getpriority(os.PRIO_PROCESS, 0)
    lowered = max(10, base)
    assert done.stdout.split() == ["[True,", f"{lowered},", f"{lowered}]", str(base)]


def test_the_session_group_is_lowered_only_by_its_leader(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-1 nice 0\n")
    code = (
        "import sys; from pathlib import Path; from service.serving import workers\n"
        f"print(workers.lower_session_group(10, Path({str(tmp_path)!r})))"
    )

    def run(new_session: bool) -> str:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT, capture_output=True, text=True, check=True, start_new_session=new_session,
        ).stdout.strip()  # fmt: skip

    assert run(new_session=False) == "False" and group.read_text() == "/autogroup-1 nice 0\n"
    assert run(new_session=True) == "True" and group.read_text() == "10\n"
    assert not workers.lower_session_group(10, tmp_path / "absent")


def _proc(root: Path, enabled: str, cgroup: str) -> Path:
    """A stand-in for /proc: the autogroup switch, this process's cgroups and its group."""
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/kernel/sched_autogroup_enabled").write_text(enabled)
    (root / "self").mkdir()
    (root / "self/cgroup").write_text(cgroup)
    (root / "self/autogroup").write_text("/autogroup-1 nice 0\n")
    return root


@pytest.mark.parametrize(
    ("enabled", "cgroup", "weight", "expected"),
    [
        ("1\n", "4:memory:/a\n2:cpu,cpuacct:/\n0::/\n", False, True),  # v1, a host
        ("1\n", "2:cpu,cpuacct:/docker/3f2a\n0::/\n", False, False),  # v1, a container
        ("0\n", "2:cpu,cpuacct:/\n", False, False),  # autogroup off
        ("1\n", "0::/\n", False, True),  # v2, the root cgroup (it has no cpu.weight)
        ("1\n", "0::/\n", True, False),  # v2, a container seen through its cgroup namespace
        ("1\n", "0::/kubepods/pod1/c1\n", True, False),  # v2, a pod's container
    ],
)
def test_session_groups_apply_only_in_the_root_cpu_cgroup(
    tmp_path: Path, enabled: str, cgroup: str, weight: bool, expected: bool
) -> None:
    proc = _proc(tmp_path / "proc", enabled, cgroup)
    cgroups = tmp_path / "cgroup"
    cgroups.mkdir()
    if weight:
        (cgroups / "cpu.weight").write_text("100\n")
    assert workers.session_groups_apply(proc, cgroups) is expected
    assert not workers.session_groups_apply(tmp_path / "absent", cgroups)


def test_the_trainer_yields_by_its_session_group_or_else_by_its_threads(tmp_path: Path) -> None:
    """A session leader on a host lowers its group and keeps its threads at 0; in a container
    (or sharing a session) its learn and decode threads take the nice instead."""
    code = (
        "import sys; from pathlib import Path; from service.serving import workers\n"
        "from service.settings import Settings\n"
        "proc, cgroups = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "print(workers.yield_to_workers(Settings(trainer_nice=7), 1, proc, cgroups))"
    )

    def run(cgroup: str, new_session: bool) -> tuple[int, str]:
        root = tmp_path / f"{len(list(tmp_path.iterdir()))}"
        proc = _proc(root / "proc", "1\n", cgroup)
        (root / "cgroup").mkdir()
        out = subprocess.run(
            [sys.executable, "-c", code, str(proc), str(root / "cgroup")],
            cwd=ROOT, capture_output=True, text=True, check=True, start_new_session=new_session,
        ).stdout.strip()  # fmt: skip
        return int(out), (proc / "self/autogroup").read_text()

    assert run("1:cpu:/\n", new_session=True) == (0, "7\n")
    assert run("1:cpu:/docker/3f2a\n", new_session=True) == (7, "/autogroup-1 nice 0\n")
    assert run("1:cpu:/\n", new_session=False) == (7, "/autogroup-1 nice 0\n")
    assert workers.yield_to_workers(Settings(trainer_nice=7), 0, tmp_path, tmp_path) == 0
