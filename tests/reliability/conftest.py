"""Reliability fixtures: a broker behind a fault proxy, services on any broker, slow-test gate.

Tests marked `slow` (soak, long crash loops) are skipped unless STREAMFIT_SLOW=1, so `make test`
runs the short forms only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.proxy import ProxiedBroker
from tests.support import ServiceProcess

HERE = Path(__file__).resolve().parent
RUN_SLOW = os.environ.get("STREAMFIT_SLOW") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow: set STREAMFIT_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords and Path(str(item.path)).is_relative_to(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def proxied_broker() -> Iterator[ProxiedBroker]:
    """A Tansu broker of its own whose advertised address is a fault proxy in front of it."""
    instance = ProxiedBroker()
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def faulty_broker(proxied_broker: ProxiedBroker) -> Iterator[ProxiedBroker]:
    """The proxied broker, always healed after the test (traffic restored, process resumed)."""
    yield proxied_broker
    proxied_broker.proxy.restore()
    proxied_broker.resume()


Spawn = Callable[..., ServiceProcess]


@pytest.fixture
def spawn(broker, topic: str, tmp_path: Path) -> Iterator[Spawn]:
    """Start `streamfit serve` processes; all stopped at teardown.

    `spawn(bootstrap=None, name="a", **settings)`: `bootstrap` defaults to the shared broker,
    `name` picks the checkpoint directory (`tmp_path/<name>`), so two names are two members
    of one group with separate models; settings become STREAMFIT_<NAME> variables.
    """
    started: list[ServiceProcess] = []

    def make(bootstrap: str | None = None, name: str = "a", **settings: object) -> ServiceProcess:
        env = {
            "STREAMFIT_KAFKA_BOOTSTRAP": bootstrap or broker.bootstrap,
            "STREAMFIT_TRAIN_TOPIC": topic,
            "STREAMFIT_GROUP_ID": f"g-{topic}",
            "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / name),
            "STREAMFIT_CHECKPOINT_INTERVAL_S": "1",
        }
        env.update({f"STREAMFIT_{k.upper()}": str(v) for k, v in settings.items()})
        service = ServiceProcess(env, tmp_path / f"{name}-{len(started)}.log")
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()
        # Shown only when the test fails: the end of each service's log, without TF noise.
        lines = [line for line in service.logs().splitlines() if line.startswith("{")]
        print(f"--- {service.log_path.name} (last 25 lines)", *lines[-25:], sep="\n")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every STREAMFIT_* variable so settings see only what a test sets."""
    for name in list(os.environ):
        if name.startswith("STREAMFIT_"):
            monkeypatch.delenv(name)
    return monkeypatch
