"""The MLflow model registry: exports registered as model versions of MODEL_NAME on a real
tracking server (`mlflow server` on loopback, one per session), once per streamfit version,
with a failure counted and logged instead of raised; and the settings that stop start-up."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service import __version__, cli
from service.checkpoints import Checkpoint
from service.registry import HTTP_DEFAULTS, ModelRegistry, registry_for
from service.settings import SettingsError, load_settings
from tests.mlflow_server import MlflowServer

FAILURES = "streamfit_registry_failures_total"


@pytest.fixture(autouse=True)
def mlflow_http_defaults_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry sets MLflow's HTTP retry defaults in this process when they are unset;
    they are unset during each test (so the registry's own apply) and undone after it."""
    for name in HTTP_DEFAULTS:
        monkeypatch.setenv(name, "")  # remembers the value to restore
        monkeypatch.delenv(name)


def a_checkpoint(version: int, task: dict[str, Any] | None = None) -> Checkpoint:
    """Version v: 1000 v samples learned; its window of 1000 holds accuracy 0.6 + 0.1 v and
    log-loss 0.6 - 0.1 v (classification), or MAE 0.6 + 0.1 v and MSE 0.25 (regression)."""
    task = task or {"kind": "binary", "classes": ["0", "1"]}
    second = 250.0 if task["kind"] == "regression" else 600.0 - 100 * version
    state = {
        "samples_trained": 1000 * version,
        "prequential": [[1000, 600.0 + 100 * version, second]],
        "model": {"spec": "mlp", "task": task},
    }
    offsets = {"train:0": 500 * version, "train:1": 500 * version + 1}
    return Checkpoint(version=version, state=state, offsets=offsets)


def a_model_name() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def export_uri(name: str, version: int) -> str:
    return f"s3://models/exports/{name}/{version}"


def model_versions(uri: str, name: str) -> list[Any]:
    """The registered model's versions as MLflow reports them, oldest first."""
    from mlflow import MlflowClient

    found = MlflowClient(uri, uri).search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def failures() -> float:
    return REGISTRY.get_sample_value(FAILURES) or 0.0


def test_each_export_is_a_model_version_with_its_source_and_tags(
    mlflow_server: MlflowServer,
) -> None:
    name = a_model_name()
    registry = ModelRegistry(mlflow_server.uri, name)
    before = failures()
    for version in (1, 2, 3):
        registry.register(version, export_uri(name, version), a_checkpoint(version))
    versions = model_versions(mlflow_server.uri, name)
    assert [mv.source for mv in versions] == [export_uri(name, v) for v in (1, 2, 3)]
    for version, mv in zip((1, 2, 3), versions, strict=True):
        tags = mv.tags
        assert tags["streamfit.version"] == str(version)
        assert tags["streamfit.samples_trained"] == str(1000 * version)
        assert json.loads(tags["streamfit.offsets"]) == a_checkpoint(version).offsets
        assert tags["streamfit.prequential.samples"] == "1000"
        assert float(tags["streamfit.prequential.accuracy"]) == pytest.approx(0.6 + 0.1 * version)
        assert float(tags["streamfit.prequential.loss"]) == pytest.approx(0.6 - 0.1 * version)
        assert tags["streamfit.task"] == "binary"
        assert tags["streamfit.package_version"] == __version__
    assert failures() == before


def test_a_regression_version_carries_its_own_metrics(mlflow_server: MlflowServer) -> None:
    name = a_model_name()
    checkpoint = a_checkpoint(1, task={"kind": "regression", "classes": []})
    ModelRegistry(mlflow_server.uri, name).register(1, export_uri(name, 1), checkpoint)
    (mv,) = model_versions(mlflow_server.uri, name)
    assert mv.tags["streamfit.task"] == "regression"
    assert float(mv.tags["streamfit.prequential.mae"]) == pytest.approx(0.7)
    assert float(mv.tags["streamfit.prequential.rmse"]) == pytest.approx(0.5)
    assert "streamfit.prequential.accuracy" not in mv.tags


def test_a_version_registered_again_adds_no_model_version(mlflow_server: MlflowServer) -> None:
    name = a_model_name()
    registry = ModelRegistry(mlflow_server.uri, name)
    registry(1, export_uri(name, 1), a_checkpoint(1))  # the exporter's hook
    registry(1, export_uri(name, 1), a_checkpoint(1))
    # A restarted trainer: a new registry, which knows only what MLflow holds.
    ModelRegistry(mlflow_server.uri, name)(1, export_uri(name, 1), a_checkpoint(1))
    assert [mv.tags["streamfit.version"] for mv in model_versions(mlflow_server.uri, name)] == ["1"]
    registry(2, export_uri(name, 2), a_checkpoint(2))
    assert [mv.version for mv in model_versions(mlflow_server.uri, name)] == ["1", "2"]


def test_the_server_down_is_a_counted_failure_and_the_newest_export_is_registered_when_back(
    mlflow_server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = a_model_name()
    registry = ModelRegistry(mlflow_server.uri, name)
    registry.register(1, export_uri(name, 1), a_checkpoint(1))
    before = failures()
    mlflow_server.stop()
    try:
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            registry.register(2, export_uri(name, 2), a_checkpoint(2))  # does not raise
        # MLflow's own default retries a dead server for minutes; one attempt is made.
        assert time.monotonic() - started < 30
        assert failures() == before + 1
        (line,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert line.name == "service.registry"
        assert line.__dict__["version"] == 2 and line.__dict__["model_name"] == name
        assert "\n" not in line.getMessage() + line.__dict__["error"]
    finally:
        mlflow_server.start()
    registry.register(3, export_uri(name, 3), a_checkpoint(3))
    registered = model_versions(mlflow_server.uri, name)
    # The newest export is registered; the failed one is not filled in after it.
    assert [mv.tags["streamfit.version"] for mv in registered] == ["1", "3"]
    assert registered[-1].source == export_uri(name, 3)
    assert failures() == before + 1


def test_a_local_export_is_registered_as_an_absolute_file_url(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tracking server refuses local sources (settings refuse the pair); a registry written
    # as a database does not: here the server's own database, already created.
    uri = mlflow_server.database_uri
    name = a_model_name()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exports" / name / "4").mkdir(parents=True)
    ModelRegistry(uri, name).register(4, f"exports/{name}/4", a_checkpoint(4))
    (mv,) = model_versions(mlflow_server.uri, name)
    assert mv.source == (tmp_path / "exports" / name / "4").as_uri()
    assert mv.tags["streamfit.version"] == "4"


# Settings: a registry without what it registers, or that cannot take it, stops start-up.


@pytest.mark.usefixtures("without_test_switches")
def test_registry_for_the_settings(tmp_path: Path) -> None:
    assert registry_for(load_settings()) is None
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = load_settings(
        mlflow_tracking_uri=uri, export_dir=str(tmp_path / "exports"), model_name="fraud"
    )
    registry = registry_for(settings)
    assert registry is not None
    assert (registry.tracking_uri, registry.model_name) == (uri, "fraud")
    assert uri not in repr(settings)  # a database URI may carry a password


@pytest.mark.usefixtures("without_test_switches")
@pytest.mark.parametrize(
    ("tracking_uri", "export_dir", "expected"),
    [
        ("localhost:5000", "s3://models/exports", "is not a tracking URI with a model registry"),
        ("ftp://mlflow/registry", "s3://models/exports", "is not a tracking URI with a model"),
        ("http://", "s3://models/exports", "names no host"),
        ("http://mlflow:5000", None, "needs STREAMFIT_EXPORT_DIR"),
        ("http://mlflow:5000", "/srv/exports", "refuses a local path as a model source"),
        ("databricks", "file:///srv/exports", "refuses a local path as a model source"),
        ("postgresql://streamfit:s3cret@db/mlflow", None, "postgresql://***@db/mlflow needs"),
    ],
)
def test_a_registry_setting_that_cannot_work_stops_with_one_line(
    tracking_uri: str, export_dir: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials for the s3:// exports, so only the registry setting is wrong.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    with pytest.raises(SettingsError) as caught:
        load_settings(mlflow_tracking_uri=tracking_uri, export_dir=export_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid settings: STREAMFIT_MLFLOW_TRACKING_URI=")
    assert expected in message
    assert "s3cret" not in message


@pytest.mark.usefixtures("without_test_switches")
def test_the_mlflow_client_missing_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(SettingsError, match=r"pip install 'streamfit\[mlflow\]'$"):
        load_settings(
            mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            export_dir=str(tmp_path / "exports"),
        )


@pytest.mark.usefixtures("without_test_switches")
def test_a_database_registry_without_mlflow_s_database_store_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # the mlflow-skinny client alone
    with pytest.raises(SettingsError, match=r"pip install mlflow \(and the database's driver\)$"):
        load_settings(
            mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            export_dir=str(tmp_path / "exports"),
        )


@pytest.mark.usefixtures("without_test_switches")
def test_streamfit_serve_refuses_a_registry_without_exports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "serve", lambda settings: 0)  # never start a server here
    monkeypatch.setenv("STREAMFIT_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("STREAMFIT_EXPORT_DIR", raising=False)
    assert cli.main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert "STREAMFIT_MLFLOW_TRACKING_URI" in line and "STREAMFIT_EXPORT_DIR" in line


def test_a_trainer_exports_to_s3_and_registers_each_export(
    mlflow_server: MlflowServer, s3: Any, service_factory: Any, broker: Any, topic: str
) -> None:
    """The whole path: checkpoints -> SavedModel exports in a bucket -> MLflow versions whose
    source is each export, never more versions than exports."""
    from tests.support import produce_synthetic, wait_for

    name = a_model_name()
    bucket = s3.bucket(f"b-{uuid.uuid4().hex[:10]}")
    produce_synthetic(broker.bootstrap, topic, rows=1500, partitions=2, seed=21)
    service = service_factory(
        checkpoint_dir=f"{bucket}/checkpoints",
        export_dir=f"{bucket}/exports",
        mlflow_tracking_uri=mlflow_server.uri,
        model_name=name,
    )
    service.env.update(s3.env)
    service.start()
    service.wait_trained(1500)
    newest = wait_for(lambda: service.get("/model")["version"] or None, 30, what="a checkpoint")
    wait_for(
        lambda: any(
            int(mv.version) and mv.source.endswith(f"/{newest}")
            for mv in model_versions(mlflow_server.uri, name)
        ),
        90,
        what=f"export {newest} registered",
    )
    versions = model_versions(mlflow_server.uri, name)
    exported = {
        key.split("/")[2]
        for key in s3.keys(bucket.removeprefix("s3://"), f"exports/{name}/")
        if key.endswith("/saved_model.pb")
    }
    sources = [mv.source for mv in versions]
    assert sources == sorted(sources, key=lambda s: int(s.rsplit("/", 1)[1]))
    assert all(s.startswith(f"{bucket}/exports/{name}/") for s in sources)
    assert {s.rsplit("/", 1)[1] for s in sources} <= exported | {
        s.rsplit("/", 1)[1]
        for s in sources[:-5]  # retention may have removed old exports
    }
    newest_registered = int(sources[-1].rsplit("/", 1)[1])
    assert newest_registered >= int(newest) and len(set(sources)) == len(sources)
    assert len(versions) <= newest_registered  # one MLflow version per export at most
    tags = versions[-1].tags
    assert tags["streamfit.version"] == str(newest_registered)
    assert int(tags["streamfit.samples_trained"]) > 0
