"""Security: admin routes need the API key and prediction routes a prediction key (both
compared in constant time), secrets never leave the process (logs, responses), Kafka SASL/SSL
settings reach aiokafka, request bodies are capped.

Basic admin-key behaviour (401 without or with a wrong key, 403 when no key is set) is in
tests/integration/test_http.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.api import admin, app, auth
from service.settings import Settings, SettingsError, load_settings
from tests.reliability.probes import SecretInRepr
from tests.support import wait_for

API_KEY = f"apikey-{uuid.uuid4().hex}"
SASL_PASSWORD = f"saslpw-{uuid.uuid4().hex}"
PREDICT_KEYS = (f"predict-a-{uuid.uuid4().hex}", f"predict-b-{uuid.uuid4().hex}")
PREDICT = {"authorization": f"Bearer {PREDICT_KEYS[1]}"}
ROW = [0.1] * 18


def test_keys_are_compared_in_constant_time():
    """Keys are compared with hmac.compare_digest, every listed key each time, and nothing in
    the HTTP layer compares a key with == or !=."""
    source = inspect.getsource(auth.matches)
    assert "hmac.compare_digest(" in source and "break" not in source, source
    for module in (admin, app, auth):
        text = inspect.getsource(module)
        assert not re.search(r"(==|!=)\s*[\w.]*_keys?\b|[\w.]*_keys?\s*(==|!=)", text), module


@pytest.fixture(scope="module")
def secretive(broker, tmp_path_factory):
    """A service holding an API key and a SASL password; its SASL login to the plaintext
    broker fails, which must not take it down."""
    from tests.support import ServiceProcess

    directory = tmp_path_factory.mktemp("secretive")
    env = {
        "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "STREAMFIT_TRAIN_TOPIC": f"t-{uuid.uuid4().hex[:10]}",
        "STREAMFIT_CHECKPOINT_DIR": str(directory / "checkpoints"),
        "STREAMFIT_API_KEY": API_KEY,
        "STREAMFIT_PREDICT_API_KEYS": ",".join(PREDICT_KEYS),
        "STREAMFIT_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMFIT_SASL_MECHANISM": "PLAIN",
        "STREAMFIT_SASL_USERNAME": "streamfit",
        "STREAMFIT_SASL_PASSWORD": SASL_PASSWORD,
        "STREAMFIT_LOG_LEVEL": "DEBUG",
        "STREAMFIT_MAX_REQUEST_BYTES": "100000",
    }
    service = ServiceProcess(env, directory / "service.log").start()
    yield service
    service.stop()


def test_failing_sasl_login_keeps_the_service_up(secretive):
    wait_for(
        lambda: (
            secretive.get("/readyz")["trainer"]["kafka_connected"] is False
            or secretive.get("/readyz")["trainer"]["last_error"]
        ),
        60,
        what="the Kafka login failure to show",
    )
    assert secretive.get("/healthz")["status"] == "alive"
    status, body = secretive.request(
        "POST", "/v1/models/susy:predict", {"instances": [ROW]}, headers=PREDICT
    )
    assert status == 200 and len(body["predictions"]) == 1


def test_secrets_never_appear_in_logs_or_responses(secretive):
    auth = {"authorization": f"Bearer {API_KEY}"}
    wait_for(lambda: secretive.get("/readyz")["trainer"]["last_error"], 60, what="an error")
    bodies = [
        secretive.request(method, path, body, headers=headers)[1]
        for method, path, body, headers in [
            ("GET", "/healthz", None, {}),
            ("GET", "/readyz", None, {}),
            ("GET", "/v2/health/ready", None, {}),
            ("GET", "/model", None, {}),
            ("GET", "/lag", None, {}),
            ("GET", "/v1/models/susy", None, {}),
            ("GET", "/v2/models/susy", None, {}),
            ("GET", "/openapi.json", None, {}),
            ("POST", "/v1/models/susy:predict", {"instances": [ROW]}, {}),
            ("POST", "/v1/models/susy:predict", {"instances": [ROW]}, PREDICT),
            ("POST", "/v1/models/susy:predict", {"instances": "x"}, PREDICT),
            ("POST", "/v1/models/susy:predict", {"instances": [ROW]}, {"authorization": "x"}),
            ("POST", "/admin/pause", None, {"authorization": "Bearer wrong"}),
            ("POST", "/admin/pause", None, {"authorization": API_KEY}),  # no "Bearer"
            ("GET", "/admin/versions", None, auth),
            ("POST", "/admin/checkpoint", None, auth),
            ("POST", "/admin/pause", None, auth),
            ("POST", "/admin/resume", None, auth),
            ("POST", "/admin/rollback/1", None, auth),
        ]
    ]
    bodies.append(secretive.get_text("/metrics"))
    everything = "\n".join(map(str, bodies))
    logs = secretive.logs()
    assert logs.count("\n") > 5, "the service logged something"
    for secret in (API_KEY, SASL_PASSWORD, *PREDICT_KEYS):
        assert secret not in everything, "a secret in an HTTP response"
        assert secret not in logs, "a secret in the logs"


def test_kafka_security_settings_reach_aiokafka(clean_env):
    cafile = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(cafile).is_file():
        pytest.skip("no CA bundle on this machine")
    settings = Settings(
        kafka_bootstrap="kafka-1:9093,kafka-2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="streamfit",
        sasl_password=SASL_PASSWORD,
        ssl_cafile=Path(cafile),
    )
    options = settings.kafka_client_options()
    assert options["bootstrap_servers"] == "kafka-1:9093,kafka-2:9093"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "streamfit"
    assert options["sasl_plain_password"] == SASL_PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0, "the CA file was loaded"

    plain = Settings(security_protocol="SSL", ssl_cafile=Path(cafile)).kafka_client_options()
    assert "sasl_mechanism" not in plain and isinstance(plain["ssl_context"], ssl.SSLContext)
    sasl = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    ).kafka_client_options()
    assert "ssl_context" not in sasl and sasl["sasl_plain_password"] == "p"


def test_every_kafka_client_gets_the_security_options(clean_env):
    """Every aiokafka client of the service is built by service.kafka.clients from
    kafka_client_options(): the trainer's consumers and dead-letter producer, fit, score, lag."""
    import service
    from service.kafka import clients
    from service.training import trainer

    root = Path(service.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "clients.py":
            continue
        text = path.read_text()
        assert "AIOKafkaConsumer(" not in text and "AIOKafkaProducer(" not in text, (
            f"{path.relative_to(root)} builds an aiokafka client outside service.kafka.clients"
        )
    settings = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SASL_PASSWORD,
    )

    async def build() -> list[Any]:
        options = settings.kafka_client_options()
        consumer = clients.new_consumer(
            options, client_id="streamfit-trainer", **trainer.consumer_options(settings)
        )
        producer = clients.new_producer(options, client_id="streamfit-dead-letter")
        found = [consumer._client, producer.client]
        await consumer.stop()
        await producer.stop()
        return found

    for client in asyncio.run(build()):
        assert client._security_protocol == "SASL_PLAINTEXT"
        assert client._sasl_plain_password == SASL_PASSWORD


def test_incomplete_sasl_settings_stop_start_up_naming_them(clean_env):
    with pytest.raises(SettingsError, match="SASL"):
        load_settings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u")


def test_secrets_are_not_in_the_settings_repr(clean_env):
    settings = Settings(
        api_key=API_KEY,
        predict_api_keys=",".join(PREDICT_KEYS),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SASL_PASSWORD,
    )
    text = repr(settings) + str(settings)
    assert SASL_PASSWORD not in text
    assert not any(key in text for key in PREDICT_KEYS)
    if API_KEY in text:
        raise SecretInRepr("repr(Settings) shows api_key")


def test_request_bodies_over_the_limit_get_413(secretive):
    big = {"instances": [ROW] * 3000}  # ~ 250 kB > STREAMFIT_MAX_REQUEST_BYTES=100000
    status, body = secretive.request("POST", "/v1/models/susy:predict", big)
    assert status == 413 and "larger than" in body["error"]
    status, _ = secretive.request(
        "POST", "/v1/models/susy:predict", {"instances": [ROW] * 100}, headers=PREDICT
    )
    assert status == 200
    assert Settings.model_fields["max_request_bytes"].default <= 16 * 1024 * 1024


def _post(service: Any, path: str, body: Any, token: str | None) -> tuple[int, str | None]:
    """Status and WWW-Authenticate header of a POST with an optional bearer token."""
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        service.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("www-authenticate")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("www-authenticate")


def test_prediction_routes_need_a_prediction_key_and_nothing_else_does(secretive):
    v1 = ("/v1/models/susy:predict", {"instances": [ROW]})
    v2 = (
        "/v2/models/susy/infer",
        {"inputs": [{"name": "x", "shape": [1, 18], "datatype": "FP32", "data": ROW}]},
    )
    for path, body in (v1, v2):
        for token in (None, "wrong", API_KEY):  # the admin key is not a prediction key
            assert _post(secretive, path, body, token) == (401, "Bearer"), (path, token)
        for key in PREDICT_KEYS:
            assert _post(secretive, path, body, key)[0] == 200, path
    status, body = secretive.request("POST", v1[0], v1[1])
    assert body == {"error": "missing or wrong bearer token for predictions"}
    for path in ("/v1/models/susy", "/v2/models/susy", "/model", "/history", "/lag"):
        assert secretive.status(path) == 200, path
    for path in ("/healthz", "/metrics", "/dashboard"):
        assert secretive.status(path) == 200, path
    # A prediction key opens no admin route.
    assert _post(secretive, "/admin/pause", None, PREDICT_KEYS[0])[0] == 401
