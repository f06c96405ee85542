"""Security: admin routes need the API key (compared in constant time), secrets never leave the
process (logs, responses), Kafka SASL/SSL settings reach aiokafka, request bodies are capped.

Basic admin-key behaviour (401 without or with a wrong key, 403 when no key is set) is in
tests/integration/test_http.py.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.api import admin, app
from service.settings import Settings, SettingsError, load_settings
from tests.reliability.probes import SecretInRepr
from tests.support import wait_for

API_KEY = f"apikey-{uuid.uuid4().hex}"
SASL_PASSWORD = f"saslpw-{uuid.uuid4().hex}"
ROW = [0.1] * 18


def test_api_key_is_compared_in_constant_time():
    """The admin key check compares with hmac.compare_digest, and nothing in the HTTP layer
    compares the key with == or !=."""
    source = inspect.getsource(admin.AdminEndpoints.authorize)
    assert "hmac.compare_digest(" in source, source
    for module in (admin, app):
        text = inspect.getsource(module)
        assert not re.search(r"(==|!=)\s*[\w.]*api_key|[\w.]*api_key\s*(==|!=)", text), module


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
    status, body = secretive.request("POST", "/v1/models/susy:predict", {"instances": [ROW]})
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
            ("POST", "/v1/models/susy:predict", {"instances": "x"}, {}),
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
    for secret in (API_KEY, SASL_PASSWORD):
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
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SASL_PASSWORD,
    )
    text = repr(settings) + str(settings)
    assert SASL_PASSWORD not in text
    if API_KEY in text:
        raise SecretInRepr("repr(Settings) shows api_key")


def test_request_bodies_over_the_limit_get_413(secretive):
    big = {"instances": [ROW] * 3000}  # ~ 250 kB > STREAMFIT_MAX_REQUEST_BYTES=100000
    status, body = secretive.request("POST", "/v1/models/susy:predict", big)
    assert status == 413 and "larger than" in body["error"]
    status, _ = secretive.request("POST", "/v1/models/susy:predict", {"instances": [ROW] * 100})
    assert status == 200
    assert Settings.model_fields["max_request_bytes"].default <= 16 * 1024 * 1024
