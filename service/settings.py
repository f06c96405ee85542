"""Settings: every knob of the service, read once from the environment (prefix STREAMFIT_)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Fault hooks: environment variables the test suite sets to make a process fail on purpose at
# one moment. They are not settings (no flag, nothing in Settings) and do nothing unless set.
FAULT_SCORE_EXIT_AFTER_WRITE = "STREAMFIT_FAULT_SCORE_EXIT_AFTER_WRITE"
FAULT_HOOKS = {
    FAULT_SCORE_EXIT_AFTER_WRITE: "`streamfit score` exits (code 86) after writing its first "
    "batch and before committing its offsets",
}


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it."""


class Settings(BaseSettings):
    """The service configuration. Field names are the setting names in lower case."""

    model_config = SettingsConfigDict(env_prefix="STREAMFIT_", extra="ignore", frozen=True)

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
    checkpoint_dir: Path = Path("./checkpoints")
    checkpoint_interval_s: float = Field(30.0, gt=0)
    checkpoint_keep: int = Field(5, ge=1)
    model_name: str = Field("susy", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    model: str = Field("mlp", min_length=1)
    model_arch: Literal["mlp", "linear"] = "mlp"
    learning_rate: float = Field(1e-3, gt=0)
    seed: int = 0
    tf_threads: int = Field(1, ge=1, le=256)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    max_request_bytes: int = Field(4_000_000, ge=1024)
    role: Literal["all", "trainer", "predictor"] = "all"
    api_key: str | None = Field(None, repr=False)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    predictor_reload_s: float = Field(2.0, gt=0)
    snapshot_interval_s: float = Field(0.05, ge=0)
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

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


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment plus explicit overrides, or raise SettingsError."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:
            raise SettingsError(f"invalid settings: {message}") from None
        name = ".".join(str(p) for p in first["loc"])
        raise SettingsError(f"invalid setting STREAMFIT_{name.upper()}: {message}") from None
