"""Fixtures: a real Kafka-protocol broker, a stand-in schema registry, unique topics, services,
an S3-protocol server and an MLflow tracking server."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.broker import EmbeddedBroker, free_port
from service.settings import unknown_setting_names
from tests.azurite import AZURITE_INSTALL, Azurite, azurite_binary
from tests.gcs_emulator import GCS_INSTALL, GcsEmulator
from tests.mlflow_server import MlflowServer
from tests.s3_server import S3Server
from tests.schema_registry import StandInSchemaRegistry
from tests.support import ServiceProcess
from tests.tools import missing_tool


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker, shared by the session; tests use their own topics."""
    instance = EmbeddedBroker(port=free_port())
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def without_test_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the test suite's own STREAMFIT_ switches (STREAMFIT_SLOW, ...) from settings loaded
    in this process, which would refuse them as unknown (tests.support.service_environ does
    the same for child processes). Read a switch before this fixture runs, at import."""
    for name in unknown_setting_names(os.environ):
        monkeypatch.delenv(name)


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def service_factory(
    broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start `streamfit serve` processes against the broker; all stopped at teardown."""
    started: list[ServiceProcess] = []

    def make(**settings: object) -> ServiceProcess:
        env = {
            "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
            "STREAMFIT_TRAIN_TOPIC": topic,
            "STREAMFIT_GROUP_ID": f"g-{topic}",
            "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "STREAMFIT_CHECKPOINT_INTERVAL_S": "1",
            "STREAMFIT_SESSION_TIMEOUT_MS": "6000",  # Kafka's minimum: faster group joins
        }
        env.update({f"STREAMFIT_{k.upper()}": str(v) for k, v in settings.items()})
        service = ServiceProcess(env, tmp_path / f"service-{len(started)}.log")
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


@pytest.fixture
def mock_cluster() -> Iterator[tuple[str, Any]]:
    """librdkafka's in-process mock cluster: its bootstrap address and the client owning it."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    owner = confluent_kafka.Producer(
        {"test.mock.num.brokers": 1, "bootstrap.servers": "unused:1", "log_level": 0}
    )
    broker = next(iter(owner.list_topics(timeout=10).brokers.values()))
    yield f"{broker.host}:{broker.port}", owner
    owner.flush(5)


@pytest.fixture
def schema_registry() -> Iterator[StandInSchemaRegistry]:
    """A stand-in Confluent Schema Registry over HTTP on a free loopback port, empty."""
    instance = StandInSchemaRegistry()
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-protocol server (moto's standalone server) for the whole session."""
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with this process's AWS variables pointing at it."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server (SQLite store, local artifact root) for the whole session;
    tests use their own registered model names."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def require_packages(*names: str, install: str) -> None:
    """`missing_tool` (a skip, a failure in CI) unless every Python package in `names` imports."""
    absent = [name for name in names if importlib.util.find_spec(name) is None]
    if absent:
        missing_tool(f"{', '.join(absent)} not installed ({install})")


@pytest.fixture(scope="session")
def gcs() -> Iterator[GcsEmulator]:
    """A real GCS-protocol server (gcp-storage-emulator, in memory) for the whole session."""
    require_packages("gcsfs", "gcp_storage_emulator", install=GCS_INSTALL)
    import gcsfs
    import gcsfs.core

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        pytest.fail(
            "gcsfs was imported before tests.gcs_emulator set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
            "=false: its gRPC bucket-layout lookups would stall every call to the emulator",
            pytrace=False,
        )
    server = GcsEmulator().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real Azure Blob server (Azurite, in memory) for the whole session."""
    require_packages("adlfs", install="pip install -e '.[test]' brings adlfs")
    binary = azurite_binary()
    if binary is None:
        missing_tool(f"azurite not installed ({AZURITE_INSTALL})")
    server = Azurite(binary, tmp_path_factory.mktemp("azurite") / "azurite.log").start()
    yield server
    server.stop()
