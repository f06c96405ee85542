"""Settings: every knob of the service, read once from the environment (prefix STREAMFIT_)."""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AliasPath,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

ENV_PREFIX = "STREAMFIT_"

# Fault hooks: environment variables the test suite sets to make a process fail on purpose at
# one moment. They are not settings (no flag, nothing in Settings) and do nothing unless set.
FAULT_SCORE_EXIT_AFTER_WRITE = "STREAMFIT_FAULT_SCORE_EXIT_AFTER_WRITE"
FAULT_HOOKS = {
    FAULT_SCORE_EXIT_AFTER_WRITE: "`streamfit score` (also with --follow, and the scorer role) "
    "exits (code 86) after writing its first batch and before committing its offsets",
}

# Kubernetes service-link variables of a Service named `streamfit` (STREAMFIT_SERVICE_HOST,
# STREAMFIT_PORT_8000_TCP_ADDR, ...): injected into the pods of its namespace, not settings.
SERVICE_LINK = re.compile(r"STREAMFIT_(?:SERVICE_HOST|SERVICE_PORT(?:_.+)?|PORT(?:_.+)?)")
WHERE_SETTINGS_ARE_LISTED = (
    "the settings are listed in README.md (Configuration) and by `streamfit serve --help`"
)


class SettingsError(Exception):
    """A setting is invalid or unknown; the message is one line naming it."""


class Settings(BaseSettings):
    """The service configuration. Field names are the setting names in lower case."""

    # extra="ignore" only concerns keyword arguments: unknown STREAMFIT_ variables are
    # refused by load_settings (unknown_setting_names).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", min_length=1)
    train_topic: str = Field(
        "susy-train", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$"
    )
    group_id: str = Field("streamfit", min_length=1)
    session_timeout_ms: int = Field(10_000, ge=1000, le=3_600_000)
    group_instance_id: str | None = Field(None, min_length=1, max_length=249)
    batch_size: int = Field(256, ge=1, le=65536)
    stream_timeout_ms: int = Field(-1, ge=-1)
    num_features: int = Field(18, ge=1, le=100_000)
    message_format: Literal["csv", "json", "avro"] = "csv"
    schema_registry_url: str | None = Field(None, min_length=1, repr=False)
    features: Annotated[tuple[str, ...], NoDecode] = ()
    label_field: str = Field("label", min_length=1)
    task: Literal["binary", "multiclass", "regression"] = "binary"
    classes: Annotated[tuple[str, ...], NoDecode] = ()
    num_classes: int | None = Field(None, ge=2, le=100_000)
    standardize: Literal["auto", "on", "off"] = "auto"
    dlq_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")
    max_record_bytes: int = Field(1_000_000, ge=64)
    labels_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")
    feedback_capacity: int = Field(100_000, ge=1)
    feedback_ttl_s: float = Field(3600.0, gt=0)
    checkpoint_dir: str = Field("./checkpoints", min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    checkpoint_interval_s: float = Field(30.0, gt=0)
    checkpoint_keep: int = Field(5, ge=1)
    # A trainer's lease on its checkpoint prefix (service.lease): renewed every third of this;
    # a successor takes over after seeing it unrenewed this long (at once after a graceful
    # stop, or a restart on the same host).
    lease_ttl_s: float = Field(30.0, gt=0)
    export_dir: str | None = Field(None, min_length=1)
    export_keep: int = Field(5, ge=1)
    mlflow_tracking_uri: str | None = Field(None, min_length=1, repr=False)
    model_name: str = Field("susy", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    model: str = Field("mlp", min_length=1)
    model_arch: Literal["mlp", "linear"] = "mlp"
    learning_rate: float = Field(1e-3, gt=0)
    seed: int = 0
    tf_threads: int = Field(1, ge=1, le=256)
    # HTTP worker processes of a trainer (service.serving.workers): they take the public port
    # and answer predictions from the shared snapshot, so the trainer's process keeps its
    # interpreter lock for the consumer and the learner. `auto`: half the CPUs (at least one;
    # none on one CPU, in the predictor role, or with LABELS_TOPIC).
    http_workers: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    # With HTTP workers, the trainer's learning runs this much lower (nice) than they do, so a
    # request preempts it; 0: the same priority (service.serving.workers.yield_to_workers).
    trainer_nice: int = Field(10, ge=0, le=19)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    max_request_bytes: int = Field(4_000_000, ge=1024)
    role: Literal["all", "trainer", "predictor", "scorer"] = "all"
    # The scorer role (service.scoring.follow): SCORE_TOPIC's records for SCORE_GROUP_ID's
    # group, predictions to SCORE_OUTPUT_TOPIC (default <SCORE_TOPIC>.predictions).
    score_topic: str | None = Field(None, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    score_group_id: str | None = Field(None, min_length=1)
    score_output_topic: str | None = Field(None, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    score_transactions: Literal["auto", "on", "off"] = "auto"
    score_http_port: int = Field(8001, ge=0, le=65535)
    api_key: str | None = Field(None, repr=False)
    # Bearer keys for the :predict and infer routes (comma-separated; none: open).
    predict_api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    unknown_settings: Literal["error", "warn"] = "error"
    predictor_reload_s: float = Field(2.0, gt=0)
    # Which stored version answers predictions (service.serving.policy).
    serve_policy: Literal["latest", "gated", "pinned"] = "latest"
    gate_window: int = Field(2000, ge=1, le=10_000)
    gate_tolerance: float = Field(0.02, ge=0)
    # A second model learning the same batches; promoted when it beats the champion
    # (service.training.challenger).
    challenger_model: str | None = Field(None, min_length=1)
    promote_margin: float = Field(0.02, ge=0)
    promote_window: int = Field(2000, ge=1, le=10_000)
    snapshot_interval_s: float = Field(0.02, ge=0)
    drift_policy: Literal["none", "alert", "reset_optimizer", "rollback"] = "alert"
    drift_threshold: float = Field(10.0, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, repr=False)
    ssl_cafile: Path | None = None

    @field_validator("features", "classes", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """`a,b,c` (environment, flags) as a tuple of names; blanks are not names."""
        if isinstance(value, str):
            names = tuple(name.strip() for name in value.split(","))
            if "" in names:
                raise ValueError(f"empty name in {value!r}")
            return names if value.strip() else ()
        return value

    @field_validator("http_workers", mode="before")
    @classmethod
    def _workers_or_auto(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or not 0 <= int(text) <= 64:
            raise ValueError(f"{value!r}: a number of processes from 0 to 64, or auto")
        return int(text)

    @field_validator("predict_api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        """`k1,k2` as a tuple; blanks dropped, never echoed in an error."""
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("checkpoint_dir", "export_dir", mode="before")
    @classmethod
    def _location(cls, value: object) -> object:
        """A path object as text (URLs such as s3://bucket/prefix stay as they are)."""
        return str(value) if isinstance(value, Path) else value

    @model_validator(mode="after")
    def _locations_open(self) -> Settings:
        """CHECKPOINT_DIR and EXPORT_DIR name stores that can be opened (a known scheme, its
        driver installed, credentials found)."""
        from service.storage import StorageConfigError, open_storage

        locations = {"CHECKPOINT_DIR": self.checkpoint_dir, "EXPORT_DIR": self.export_dir}
        for name, location in locations.items():
            if location is None:
                continue
            try:
                open_storage(location, self.storage_options)
            except StorageConfigError as exc:
                raise ValueError(f"STREAMFIT_{name}={location}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _registry_has_what_it_registers(self) -> Settings:
        if self.mlflow_tracking_uri is not None:
            from service.registry import check_registry_settings

            check_registry_settings(self.mlflow_tracking_uri, self.export_dir)
        return self

    @model_validator(mode="after")
    def _model_forms_agree(self) -> Settings:
        explicit = self.model_fields_set
        if {"model", "model_arch"} <= explicit and self.model != self.model_arch:
            raise ValueError(
                f"STREAMFIT_MODEL={self.model} and its alias STREAMFIT_MODEL_ARCH="
                f"{self.model_arch} disagree: set one"
            )
        if self.features and len(set(self.features)) != len(self.features):
            raise ValueError("STREAMFIT_FEATURES names a feature twice")
        if self.label_field in self.features:
            raise ValueError(f"the label field {self.label_field!r} is also a feature")
        if self.message_format == "avro" and not self.schema_registry_url:
            raise ValueError("MESSAGE_FORMAT=avro needs STREAMFIT_SCHEMA_REGISTRY_URL")
        if self.challenger_model is not None and self.challenger_model == self.model_spec:
            raise ValueError(
                f"STREAMFIT_CHALLENGER_MODEL={self.challenger_model} is the champion's model "
                "(STREAMFIT_MODEL): a challenger must be another model"
            )
        return self

    @property
    def model_spec(self) -> str:
        """What `MODEL` names: `mlp`, `linear`, a `.keras` path or `module:function`
        (`MODEL_ARCH` is an alias of the built-ins)."""
        if "model" not in self.model_fields_set and "model_arch" in self.model_fields_set:
            return self.model_arch
        return self.model

    @property
    def builtin_model(self) -> bool:
        return self.model_spec in ("mlp", "linear")

    def with_model(self, spec: str) -> Settings:
        """These settings with `MODEL` set to `spec` (the challenger's, or a role's)."""
        return self.model_copy(update={"model": spec, "model_arch": "mlp"})

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _http_workers_fit(self) -> Settings:
        if isinstance(self.http_workers, int):
            if self.http_workers and self.labels_topic and self.role != "predictor":
                raise ValueError(
                    "STREAMFIT_HTTP_WORKERS cannot be used with STREAMFIT_LABELS_TOPIC: delayed "
                    "labels join predictions the trainer's own process made (set it to 0)"
                )
        return self

    @model_validator(mode="after")
    def _scorer_has_its_job(self) -> Settings:
        if self.role == "scorer":
            missing = [
                f"STREAMFIT_{name.upper()}"
                for name in ("score_topic", "score_group_id")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"STREAMFIT_ROLE=scorer needs {' and '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "SASL security needs STREAMFIT_SASL_MECHANISM, _SASL_USERNAME and _SASL_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _dead_letter_topic_fits(self) -> Settings:
        if len(self.dead_letter_topic) > 249:
            raise ValueError(
                "the dead-letter topic name exceeds Kafka's 249 characters: set STREAMFIT_DLQ_TOPIC"
            )
        return self

    @property
    def dead_letter_topic(self) -> str:
        """The dead-letter topic: `DLQ_TOPIC`, or `<train topic>.dlq`."""
        return self.dlq_topic or f"{self.train_topic}.dlq"

    def kafka_client_options(self) -> dict[str, object]:
        """Connection options shared by every aiokafka client (bootstrap and security)."""
        options: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        return options


def setting_env_names(model: type[BaseSettings] = Settings) -> set[str]:
    """The environment variable names `model` reads, upper-cased: STREAMFIT_<FIELD>, or a
    field's validation aliases when it has them (pydantic-settings then reads only those)."""
    prefix = str(model.model_config.get("env_prefix") or "").upper()
    return {
        env
        for name, field in model.model_fields.items()
        for env in _field_env_names(prefix, name, field)
    }


def _field_env_names(prefix: str, name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if alias is None:
        return [prefix + name.upper()]
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    return [str(c.path[0] if isinstance(c, AliasPath) else c).upper() for c in choices]


def unknown_setting_names(environ: Mapping[str, str]) -> list[str]:
    """The STREAMFIT_ variables of `environ` that are not a setting, a fault hook or a
    Kubernetes service link, sorted. Matched without case, as pydantic-settings reads them.

    >>> unknown_setting_names({"STREAMFIT_BATCHSIZE": "64", "STREAMFIT_BATCH_SIZE": "64",
    ...     "STREAMFIT_PORT_8000_TCP_ADDR": "10.0.0.7", "HOME": "/root"})
    ['STREAMFIT_BATCHSIZE']
    """
    known = setting_env_names() | FAULT_HOOKS.keys()
    return sorted(
        name
        for name in environ
        if (upper := name.upper()).startswith(ENV_PREFIX)
        and upper not in known
        and not SERVICE_LINK.fullmatch(upper)
    )


def _nearest(name: str) -> str | None:
    """The valid name closest to `name`, compared without the prefix all names share."""
    by_suffix = {
        valid.removeprefix(ENV_PREFIX): valid for valid in setting_env_names() | FAULT_HOOKS.keys()
    }
    close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), by_suffix, n=1)
    return by_suffix[close[0]] if close else None


def describe_unknown(names: list[str]) -> str:
    """One line naming the unknown variables, each with the nearest valid name.

    >>> describe_unknown(["STREAMFIT_BATCHSIZE"])
    'unknown setting STREAMFIT_BATCHSIZE (did you mean STREAMFIT_BATCH_SIZE?)'
    """
    nearest = {name: _nearest(name) for name in names}
    parts = [
        f"{name} (did you mean {valid}?)" if valid else f"{name} (no setting has a similar name)"
        for name, valid in nearest.items()
    ]
    line = f"unknown setting{'s' if len(names) > 1 else ''} {', '.join(parts)}"
    return line if all(nearest.values()) else f"{line}; {WHERE_SETTINGS_ARE_LISTED}"


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment plus explicit overrides, or raise SettingsError.

    An unknown STREAMFIT_ variable (a misspelt setting would be ignored otherwise) stops
    start-up, before any value is validated (a misspelling often explains an invalid
    combination); with UNKNOWN_SETTINGS=warn it is logged and ignored.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = unknown_setting_names(os.environ)
    if unknown and _unknown_settings_mode(given) != "warn":
        raise SettingsError(describe_unknown(unknown))
    try:
        settings = Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:
            raise SettingsError(f"invalid settings: {message}") from None
        name = ".".join(str(p) for p in first["loc"])
        raise SettingsError(f"invalid setting STREAMFIT_{name.upper()}: {message}") from None
    for name in unknown:
        logger.warning("STREAMFIT_UNKNOWN_SETTINGS=warn: ignoring %s", describe_unknown([name]))
    return settings


def _unknown_settings_mode(given: Mapping[str, object]) -> object:
    """UNKNOWN_SETTINGS as given, before Settings validates it (unknown names are checked
    first); pydantic-settings matches environment names without case."""
    if "unknown_settings" in given:
        return given["unknown_settings"]
    names = {name.upper(): value for name, value in os.environ.items()}
    return names.get(f"{ENV_PREFIX}UNKNOWN_SETTINGS", "error")
