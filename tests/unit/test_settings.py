"""Settings: SPEC.md defaults, STREAMFIT_ environment, one-line errors naming the setting."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service import cli
from service.settings import (
    FAULT_HOOKS,
    Settings,
    SettingsError,
    load_settings,
    setting_env_names,
    unknown_setting_names,
)

ROOT = Path(__file__).resolve().parents[2]

# SPEC.md, "Configuration".
SPEC_DEFAULTS = {
    "kafka_bootstrap": "127.0.0.1:9092",
    "train_topic": "susy-train",
    "group_id": "streamfit",
    "batch_size": 256,
    "stream_timeout_ms": -1,
    "num_features": 18,
    "message_format": "csv",
    "checkpoint_dir": "./checkpoints",  # a path or a URL (s3://bucket/prefix)
    "checkpoint_interval_s": 30,
    "checkpoint_keep": 5,
    "model_name": "susy",
    "http_host": "127.0.0.1",
    "http_port": 8000,
    "role": "all",
    "api_key": None,
    "log_format": "json",
    "security_protocol": "PLAINTEXT",
}


def test_defaults_are_the_spec_values(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    for name, value in SPEC_DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings.dlq_topic is None
    assert settings.dead_letter_topic == "susy-train.dlq"
    assert settings.export_dir is None and settings.export_keep == 5  # no exports unless asked
    assert settings.kafka_client_options() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_environment_is_read(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMFIT_BATCH_SIZE", "32")
    clean_env.setenv("STREAMFIT_TRAIN_TOPIC", "clicks")
    clean_env.setenv("STREAMFIT_ROLE", "predictor")
    clean_env.setenv("STREAMFIT_MESSAGE_FORMAT", "json")
    clean_env.setenv("STREAMFIT_STREAM_TIMEOUT_MS", "5000")
    clean_env.setenv("STREAMFIT_CHECKPOINT_DIR", "/tmp/somewhere")
    clean_env.setenv("STREAMFIT_LOG_LEVEL", "debug")
    clean_env.setenv("STREAMFIT_API_KEY", "s3cret")
    settings = load_settings()
    assert settings.batch_size == 32
    assert settings.train_topic == "clicks"
    assert settings.role == "predictor"
    assert settings.message_format == "json"
    assert settings.stream_timeout_ms == 5000
    assert settings.checkpoint_dir == "/tmp/somewhere"
    assert settings.log_level == "DEBUG"
    assert settings.api_key == "s3cret"
    assert settings.dead_letter_topic == "clicks.dlq"


def test_explicit_overrides_beat_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMFIT_BATCH_SIZE", "32")
    assert load_settings(batch_size="64").batch_size == 64
    assert load_settings(batch_size=None).batch_size == 32  # None means "not given"


def test_dlq_topic_setting_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMFIT_DLQ_TOPIC", "rejected")
    assert load_settings().dead_letter_topic == "rejected"


def test_sasl_settings_reach_the_client_options(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMFIT_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_env.setenv("STREAMFIT_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("STREAMFIT_SASL_USERNAME", "alice")
    clean_env.setenv("STREAMFIT_SASL_PASSWORD", "pw")
    settings = load_settings()
    options = settings.kafka_client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == "pw"
    assert "pw" not in repr(settings)


BAD_SETTINGS = [
    ("STREAMFIT_BATCH_SIZE", "0"),
    ("STREAMFIT_BATCH_SIZE", "lots"),
    ("STREAMFIT_ROLE", "bogus"),
    ("STREAMFIT_MESSAGE_FORMAT", "xml"),
    ("STREAMFIT_HTTP_PORT", "70000"),
    ("STREAMFIT_HTTP_PORT", "-1"),
    ("STREAMFIT_NUM_FEATURES", "0"),
    ("STREAMFIT_STREAM_TIMEOUT_MS", "-2"),
    ("STREAMFIT_CHECKPOINT_KEEP", "0"),
    ("STREAMFIT_CHECKPOINT_INTERVAL_S", "0"),
    ("STREAMFIT_EXPORT_KEEP", "0"),
    ("STREAMFIT_EXPORT_DIR", "ftp://host/models"),  # no such store: stops start-up too
    ("STREAMFIT_TRAIN_TOPIC", "no spaces"),
    ("STREAMFIT_LOG_FORMAT", "yaml"),
]


def _assert_one_line_naming(message: str, name: str) -> None:
    assert "\n" not in message.strip()
    assert name in message


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_environment_value_names_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    _assert_one_line_naming(str(caught.value), name)


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_override_names_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    field = name.removeprefix("STREAMFIT_").lower()
    with pytest.raises(SettingsError) as caught:
        load_settings(**{field: value})
    _assert_one_line_naming(str(caught.value), name)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("missing", ["MECHANISM", "USERNAME", "PASSWORD"])
def test_sasl_without_credentials_is_refused(
    clean_env: pytest.MonkeyPatch, protocol: str, missing: str
) -> None:
    clean_env.setenv("STREAMFIT_SECURITY_PROTOCOL", protocol)
    credentials = {"MECHANISM": "PLAIN", "USERNAME": "alice", "PASSWORD": "pw"}
    for part, value in credentials.items():
        if part != missing:
            clean_env.setenv(f"STREAMFIT_SASL_{part}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    _assert_one_line_naming(str(caught.value), "STREAMFIT_SASL_")
    assert missing in str(caught.value)


def test_settings_are_frozen(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
        settings.batch_size = 1  # type: ignore[misc]


def test_derived_dead_letter_topic_is_a_legal_kafka_name(clean_env: pytest.MonkeyPatch) -> None:
    try:
        settings = load_settings(train_topic="t" * 249)
    except SettingsError as exc:
        _assert_one_line_naming(str(exc), "STREAMFIT_")
        return
    assert len(settings.dead_letter_topic) <= 249


def test_every_setting_has_a_serve_flag() -> None:
    parser = cli.build_parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions  # noqa: SLF001 - argparse has no public accessor
        if hasattr(action, "choices") and isinstance(action.choices, dict)
    )
    flags = {option for action in serve._actions for option in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags, name


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["serve", "--batch-size", "0"], "STREAMFIT_BATCH_SIZE"),
        (["serve", "--role", "bogus"], "STREAMFIT_ROLE"),
        (["serve", "--message-format", "xml"], "STREAMFIT_MESSAGE_FORMAT"),
        (["serve", "--http-port", "70000"], "STREAMFIT_HTTP_PORT"),
    ],
)
def test_cli_bad_flag_exits_2_with_one_line(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], name: str
) -> None:
    clean_env.setattr(cli, "serve", lambda settings: 0)  # never start a server from a unit test
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert name in lines[0]


def test_cli_bad_environment_exits_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setattr(cli, "serve", lambda settings: 0)
    clean_env.setenv("STREAMFIT_SECURITY_PROTOCOL", "SASL_SSL")
    assert cli.main(["serve"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "STREAMFIT_SASL_" in lines[0]


def test_python_m_service_serve_bad_batch_size() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFIT_")}
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--batch-size", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "STREAMFIT_BATCH_SIZE" in lines[0]


def test_every_setting_and_fault_hook_is_documented_in_the_readme() -> None:
    from tests.support import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") : readme.index("## Commands")]
    missing = [name for name in Settings.model_fields if f"`{name.upper()}`" not in section]
    assert not missing, f"settings missing from the README's Configuration: {missing}"
    for hook in FAULT_HOOKS:
        assert hook in section, hook


# Unknown STREAMFIT_ variables: a misspelt setting stops start-up instead of being ignored.


def test_misspelt_setting_is_refused_with_the_nearest_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMFIT_BATCHSIZE", "64")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "unknown setting STREAMFIT_BATCHSIZE (did you mean STREAMFIT_BATCH_SIZE?)"
    )


def test_lower_case_names_are_checked_as_pydantic_settings_reads_them(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("streamfit_batch_size", "64")
    assert load_settings().batch_size == 64
    clean_env.setenv("streamfit_batchsize", "64")
    with pytest.raises(SettingsError, match=r"streamfit_batchsize \(did you mean STREAMFIT_BA"):
        load_settings()


def test_a_name_like_no_setting_points_to_the_list(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMFIT_XYZZY", "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "unknown setting STREAMFIT_XYZZY (no setting has a similar name); the settings are "
        "listed in README.md (Configuration) and by `streamfit serve --help`"
    )


def test_several_unknown_names_are_one_sorted_line(clean_env: pytest.MonkeyPatch) -> None:
    for name in ("STREAMFIT_XYZZY", "STREAMFIT_TRAIN_TOPICS", "STREAMFIT_BATCHSIZE"):
        clean_env.setenv(name, "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    _assert_one_line_naming(message, "unknown settings ")
    assert message.startswith(
        "unknown settings STREAMFIT_BATCHSIZE (did you mean STREAMFIT_BATCH_SIZE?), "
        "STREAMFIT_TRAIN_TOPICS (did you mean STREAMFIT_TRAIN_TOPIC?), "
        "STREAMFIT_XYZZY (no setting has a similar name); the settings are listed in "
    )


def test_unknown_names_are_reported_before_invalid_values(clean_env: pytest.MonkeyPatch) -> None:
    """A misspelt credential explains why SASL looks incomplete: name it, not the symptom."""
    clean_env.setenv("STREAMFIT_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_env.setenv("STREAMFIT_SASL_MECHANISM", "PLAIN")
    clean_env.setenv("STREAMFIT_SASL_USERNAME", "alice")
    clean_env.setenv("STREAMFIT_SASL_PASWORD", "pw")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "(did you mean STREAMFIT_SASL_PASSWORD?)" in str(caught.value)


SERVICE_LINKS = {  # what Kubernetes injects for a Service named `streamfit`
    "STREAMFIT_SERVICE_HOST": "10.96.0.12",
    "STREAMFIT_SERVICE_PORT": "8000",
    "STREAMFIT_SERVICE_PORT_HTTP": "8000",
    "STREAMFIT_PORT": "tcp://10.96.0.12:8000",
    "STREAMFIT_PORT_8000_TCP": "tcp://10.96.0.12:8000",
    "STREAMFIT_PORT_8000_TCP_PROTO": "tcp",
    "STREAMFIT_PORT_8000_TCP_PORT": "8000",
    "STREAMFIT_PORT_8000_TCP_ADDR": "10.96.0.12",
}


def test_kubernetes_service_links_and_fault_hooks_pass(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {**SERVICE_LINKS, **dict.fromkeys(FAULT_HOOKS, "0")}.items():
        clean_env.setenv(name, value)
    assert load_settings().http_port == 8000
    assert unknown_setting_names({**SERVICE_LINKS, "STREAMFIT_SERVICE_HOSTS": "x"}) == [
        "STREAMFIT_SERVICE_HOSTS"
    ]


def test_every_field_is_a_valid_name_without_a_list_to_maintain() -> None:
    environ = {f"STREAMFIT_{name.upper()}": "1" for name in Settings.model_fields}
    assert unknown_setting_names(environ) == []
    assert setting_env_names() == set(environ)


def test_a_field_with_aliases_is_known_by_its_aliases() -> None:
    class Aliased(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="STREAMFIT_")
        model: str = Field(
            "mlp", validation_alias=AliasChoices("STREAMFIT_MODEL", "streamfit_arch")
        )
        task: str = "binary"

    assert setting_env_names(Aliased) == {"STREAMFIT_MODEL", "STREAMFIT_ARCH", "STREAMFIT_TASK"}


def test_warn_mode_logs_each_unknown_name_and_goes_on(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("STREAMFIT_BATCHSIZE", "64")
    clean_env.setenv("STREAMFIT_XYZZY", "1")
    clean_env.setenv("STREAMFIT_UNKNOWN_SETTINGS", "warn")
    with caplog.at_level(logging.WARNING, logger="service.settings"):
        settings = load_settings()
    assert settings.batch_size == 256 and settings.unknown_settings == "warn"
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert lines[0] == (
        "service.settings",
        logging.WARNING,
        "STREAMFIT_UNKNOWN_SETTINGS=warn: ignoring unknown setting STREAMFIT_BATCHSIZE "
        "(did you mean STREAMFIT_BATCH_SIZE?)",
    )
    assert lines[1][2].startswith("STREAMFIT_UNKNOWN_SETTINGS=warn: ignoring unknown setting ")
    assert "STREAMFIT_XYZZY" in lines[1][2] and len(lines) == 2


def test_warn_mode_as_an_override_and_its_values(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("STREAMFIT_BATCHSIZE", "64")
    with caplog.at_level(logging.WARNING, logger="service.settings"):
        assert load_settings(unknown_settings="warn").unknown_settings == "warn"
    assert len(caplog.records) == 1
    with pytest.raises(SettingsError, match="STREAMFIT_BATCHSIZE"):
        load_settings(unknown_settings="error")
    clean_env.delenv("STREAMFIT_BATCHSIZE")
    with pytest.raises(SettingsError, match="invalid setting STREAMFIT_UNKNOWN_SETTINGS"):
        load_settings(unknown_settings="ignore")


def test_cli_refuses_an_unknown_name_before_serving(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never(settings: Settings) -> int:  # where TensorFlow, Kafka and HTTP would start
        raise AssertionError("serve() reached")

    clean_env.setattr(cli, "serve", never)
    clean_env.setenv("STREAMFIT_BATCHSIZE", "64")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "streamfit: unknown setting STREAMFIT_BATCHSIZE (did you mean STREAMFIT_BATCH_SIZE?)\n"
    )
    served: list[Settings] = []

    def record(settings: Settings) -> int:
        served.append(settings)
        return 0

    clean_env.setattr(cli, "serve", record)
    assert cli.main(["serve", "--unknown-settings", "warn"]) == 0
    assert [settings.unknown_settings for settings in served] == ["warn"]


def test_python_m_service_serve_refuses_a_misspelt_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFIT_")}
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env={**env, "STREAMFIT_BATCHSIZE": "64"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "streamfit: unknown setting STREAMFIT_BATCHSIZE (did you mean STREAMFIT_BATCH_SIZE?)\n"
    )


def test_the_harness_passes_no_test_switch_to_a_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import service_environ

    switches = ("STREAMFIT_SLOW", "STREAMFIT_REQUIRE_TOOLS", "STREAMFIT_TEST_TXN_BOOTSTRAP")
    for name in switches:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("STREAMFIT_BATCH_SIZE", "64")
    monkeypatch.setenv("STREAMFIT_PORT", "tcp://10.96.0.12:8000")
    monkeypatch.setenv(next(iter(FAULT_HOOKS)), "1")
    env = service_environ()
    assert not set(switches) & set(env)
    assert {"STREAMFIT_BATCH_SIZE", "STREAMFIT_PORT", next(iter(FAULT_HOOKS))} <= set(env)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "STREAMFIT_SCORE_TOPIC and STREAMFIT_SCORE_GROUP_ID"),
        ({"STREAMFIT_SCORE_TOPIC": "events"}, "STREAMFIT_SCORE_GROUP_ID"),
    ],
)
def test_scorer_role_without_its_job_exits_2_with_one_line(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    missing: str,
) -> None:
    clean_env.setattr(cli, "follow", lambda settings: 0)  # never start a scorer here
    clean_env.setenv("STREAMFIT_ROLE", "scorer")
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert cli.main(["serve"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"streamfit: invalid settings: STREAMFIT_ROLE=scorer needs {missing}"]
