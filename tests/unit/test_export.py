"""Exports for TF Serving: the SavedModel answers what the service answers at that version, a
version appears whole, retention bounds the directory, and the exporter thread coalesces.
Real learners, real SavedModels on disk, loaded back with `tf.saved_model.load`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.checkpoints import Checkpoint, CheckpointStore
from service.export import DirectoryTarget, Exporter, target_for
from service.serving.snapshot import snapshot_from_state
from service.settings import Settings
from service.storage import LocalStorage
from service.training.learner import Learner, learner_for
from service.training.tf_runtime import tf

COMPLETE = {
    "saved_model.pb",
    "fingerprint.pb",
    "assets",
    "variables",
    "variables/variables.index",
    "variables/variables.data-00000-of-00001",
}


def rows(kind: str, n: int, seed: int) -> tuple[Any, np.ndarray]:
    """Features far from zero mean and unit variance (standardization matters), and labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.float32)
    if kind == "named":
        x: Any = {
            "amount": rng.gamma(2.0, 25.0, (n, 1)).astype(np.float32),
            "country": rng.choice(["FR", "US", "XX", "GB"], (n, 1)).astype(object),
            "hour": rng.integers(0, 24, (n, 1)).astype(np.float32),
        }
        return x, (y > 0).astype(np.float32)
    x = (rng.standard_normal((n, 18)) * 4 + 50).astype(np.float32)
    return x, y


def trained(settings: dict[str, Any], kind: str) -> Learner:
    learner = learner_for(Settings(seed=5, **settings))
    for step in range(4):
        x, y = rows(kind, 128, seed=step)
        learner.learn(x, y)
    return learner


def checkpoint_of(learner: Learner, version: int) -> Checkpoint:
    return Checkpoint(version=version, state=learner.state(), offsets={"t:0": version})


def serving(where: str) -> Any:
    return tf.saved_model.load(where).signatures["serving_default"]


def call(signature: Any, x: Any) -> dict[str, np.ndarray]:
    if isinstance(x, dict):
        answer = signature(**{name: tf.constant(column) for name, column in x.items()})
    else:
        answer = signature(features=tf.constant(x))
    return {name: tensor.numpy() for name, tensor in answer.items()}


def wait_until(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def specs(structure: dict[str, Any]) -> dict[str, tuple[Any, tuple[int | None, ...]]]:
    return {name: (spec.dtype, tuple(spec.shape)) for name, spec in structure.items()}


def visible(model_dir: Path) -> dict[str, set[str]]:
    """What a reader listing the model directory sees: each entry, and under a version what
    it holds (a version that retention renamed away while it was listed is not counted)."""
    seen: dict[str, set[str]] = {}
    for entry in model_dir.iterdir():
        if not entry.name.isdigit():
            seen[entry.name] = set()
            continue
        files = {p.relative_to(entry).as_posix() for p in entry.rglob("*")}
        if entry.exists():
            seen[entry.name] = files
    return seen


CASES = {  # settings, the rows' form, the output, its shape
    "binary-mlp": ({}, "positional", "probability", (None,)),
    "multiclass-mlp": (
        {"task": "multiclass", "num_classes": 3},
        "positional",
        "probabilities",
        (None, 3),
    ),
    "regression-linear": (
        {"task": "regression", "model": "linear"},
        "positional",
        "prediction",
        (None,),
    ),
    "named-stringlookup": (
        {"model": "tests.user_models:payments", "message_format": "json"},
        "named",
        "probability",
        (None,),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_export_answers_what_the_service_answers_at_that_version(
    case: str, tmp_path: Path
) -> None:
    settings, kind, output, shape = CASES[case]
    learner = trained(settings, kind)
    exporter = Exporter(target_for(str(tmp_path / "exports" / "susy")))
    where = exporter.export(checkpoint_of(learner, 7))
    assert where == str(tmp_path / "exports" / "susy" / "7")

    signature = serving(where)
    if kind == "named":
        assert specs(signature.structured_input_signature[1]) == {
            "amount": (tf.float32, (None, 1)),
            "country": (tf.string, (None, 1)),
            "hour": (tf.float32, (None, 1)),
        }
    else:
        assert specs(signature.structured_input_signature[1]) == {
            "features": (tf.float32, (None, 18))
        }
    assert specs(signature.structured_outputs) == {output: (tf.float32, shape)}

    x, _ = rows(kind, 200, seed=99)
    served = snapshot_from_state(learner.state(), 7)  # the service's own prediction path
    expected = served.predict(x)
    got = call(signature, x)[output]
    assert got.shape == expected.shape
    assert np.ptp(expected) > 1e-3, "a model that answers each row differently"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_stored_checkpoint_of_the_previous_release_exports_its_built_in_model(
    tmp_path: Path,
) -> None:
    """Without `model` in its state (before STREAMFIT_MODEL) the built-in architecture is
    rebuilt; the checkpoint goes through its file, as a tool exporting old versions would."""
    learner = trained({}, "positional")
    state = learner.state()
    del state["model"]
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(Checkpoint(version=3, state=state, offsets={"t:0": 512}))
    stored = store.load(3)
    where = Exporter(target_for(str(tmp_path / "exports"))).export(stored)
    x, _ = rows("positional", 100, seed=98)
    np.testing.assert_allclose(
        call(serving(where), x)["probability"],
        snapshot_from_state(stored.state, 3).predict(x),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def linear() -> Learner:
    return trained({"model": "linear"}, "positional")


def test_retention_keeps_the_newest_versions_and_a_reader_sees_only_whole_ones(
    linear: Learner, tmp_path: Path
) -> None:
    model_dir = tmp_path / "susy"
    exporter = Exporter(target_for(str(model_dir)), keep=2)
    sightings: list[dict[str, set[str]]] = []
    done = threading.Event()

    def watch() -> None:  # a reader polling the directory, as TF Serving does
        while not done.is_set():
            if model_dir.is_dir():
                try:
                    sightings.append(visible(model_dir))
                except FileNotFoundError:  # a version renamed away while listed
                    pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for version in range(1, 6):
            exporter.export(checkpoint_of(linear, version))
    finally:
        done.set()
        watcher.join()

    assert sorted(os.listdir(model_dir)) == ["4", "5"], "newest two, no staging left"
    versions = [seen for sighting in sightings for name, seen in sighting.items()]
    assert len(sightings) > 20 and versions, "the reader looked while versions were written"
    for sighting in sightings:
        for name, seen in sighting.items():
            if name.isdigit():
                assert seen == COMPLETE, f"version {name} seen incomplete: {sorted(seen)}"
            else:
                assert name.startswith("."), f"{name}: TF Serving would try to load it"


def test_a_failed_export_leaves_no_version_and_no_staging(
    linear: Learner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "susy"
    exporter = Exporter(target_for(str(model_dir)))
    assert exporter.export_quietly(checkpoint_of(linear, 1)) == str(model_dir / "1")

    def half_written(checkpoint: Checkpoint, directory: Path) -> None:
        (directory / "variables").mkdir(parents=True)
        (directory / "variables" / "variables.index").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporter._writer, "write", half_written)
    failures = REGISTRY.get_sample_value("streamfit_export_failures_total") or 0.0
    assert exporter.export_quietly(checkpoint_of(linear, 2)) is None
    assert REGISTRY.get_sample_value("streamfit_export_failures_total") == failures + 1
    assert os.listdir(model_dir) == ["1"]
    assert REGISTRY.get_sample_value("streamfit_export_version") == 1


def test_a_dead_writers_staged_version_is_removed_by_the_next_export(
    linear: Learner, tmp_path: Path
) -> None:
    model_dir = tmp_path / "susy"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    orphan = model_dir / f".9.{int(dead.stdout)}.tmp"
    (orphan / "variables").mkdir(parents=True)
    live = model_dir / f".8.{os.getpid()}.tmp"  # this process's own: not an orphan
    live.mkdir()
    Exporter(DirectoryTarget(LocalStorage(model_dir))).export(checkpoint_of(linear, 10))
    assert sorted(os.listdir(model_dir)) == [live.name, "10"]


def test_the_export_thread_keeps_only_the_newest_waiting_checkpoint_and_finishes_on_close(
    linear: Learner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[tuple[int, str, int]] = []
    exporter = Exporter(
        target_for(str(tmp_path / "susy")),
        keep=5,
        hooks=[lambda v, where, c: exported.append((v, where, c.version))],
    )
    writing, release = threading.Event(), threading.Event()
    attempted: list[int] = []
    real_write = exporter._writer.write

    def slow_write(checkpoint: Checkpoint, directory: Path) -> None:
        attempted.append(checkpoint.version)
        writing.set()
        assert release.wait(30)
        if checkpoint.version == 4:
            raise ValueError("a model that cannot be exported")
        real_write(checkpoint, directory)

    monkeypatch.setattr(exporter._writer, "write", slow_write)
    started = time.perf_counter()
    exporter.submit(checkpoint_of(linear, 1))
    assert writing.wait(30)
    for version in (2, 3):  # while 1 is being written: 2 is replaced by 3
        exporter.submit(checkpoint_of(linear, version))
    assert time.perf_counter() - started < 1.0, "submit returns at once"
    release.set()
    wait_until(lambda: 3 in attempted)
    exporter.submit(checkpoint_of(linear, 4))  # fails: the thread goes on
    wait_until(lambda: 4 in attempted)
    exporter.submit(checkpoint_of(linear, 5))
    exporter.close()
    assert attempted == [1, 3, 4, 5]
    assert exporter._thread is not None and not exporter._thread.is_alive()
    where = str(tmp_path / "susy")
    assert exported == [(1, f"{where}/1", 1), (3, f"{where}/3", 3), (5, f"{where}/5", 5)]
    assert sorted(os.listdir(where)) == ["1", "3", "5"]
    exporter.submit(checkpoint_of(linear, 6))  # after close: ignored, no thread left behind
    assert sorted(os.listdir(where)) == ["1", "3", "5"]
