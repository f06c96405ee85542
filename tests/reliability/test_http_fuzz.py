"""HTTP fuzzing from the OpenAPI schema: no route answers 5xx, whatever it is sent.

Schemathesis generates requests for every operation of the OpenAPI schema, valid ones and
invalid ones (wrong types, missing fields, odd path parameters, bad bodies), and sends them to
a live service, with the admin key so the admin routes are exercised beyond their 401. The
number of examples per operation is bounded so the whole run stays well under two minutes.

The schema is built from the app factory at import time (the live service serves the same
one, checked below), because schemathesis' fixture-based lazy schema does not work with
pytest 9 (it sets `Node._nodeid`, which pytest 9 no longer has).
"""

from __future__ import annotations

import uuid

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from service.api import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support import ServiceProcess, produce_synthetic  # noqa: E402

API_KEY = f"fuzz-{uuid.uuid4().hex}"
EXAMPLES_PER_OPERATION = 60


@pytest.fixture(scope="module")
def fuzzed(broker, tmp_path_factory):
    """A trained service with an API key and a small request limit."""
    directory = tmp_path_factory.mktemp("fuzzed")
    topic = f"t-{uuid.uuid4().hex[:10]}"
    produce_synthetic(broker.bootstrap, topic, rows=600, partitions=2)
    env = {
        "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "STREAMFIT_TRAIN_TOPIC": topic,
        "STREAMFIT_GROUP_ID": f"g-{topic}",
        "STREAMFIT_CHECKPOINT_DIR": str(directory / "checkpoints"),
        "STREAMFIT_CHECKPOINT_INTERVAL_S": "1",
        "STREAMFIT_API_KEY": API_KEY,
        "STREAMFIT_MAX_REQUEST_BYTES": "200000",
    }
    service = ServiceProcess(env, directory / "service.log").start()
    service.wait_trained(600)
    yield service
    service.stop()


OPENAPI = create_app(Settings(api_key=API_KEY)).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_live_service_serves_the_fuzzed_schema(fuzzed):
    assert fuzzed.get("/openapi.json") == OPENAPI


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    derandomize=True,
)
def test_no_route_answers_5xx(case, fuzzed):
    if case.body is not None and "name" in (case.path_parameters or {}):
        # Fuzz the bodies of the served model, not only 404s for random model names.
        case.path_parameters["name"] = "susy"
    response = case.call(
        base_url=fuzzed.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: "
        f"{response.text[:500]}\nrequest body: {str(case.body)[:500]}"
    )
    fuzzed._alive()
