"""Model registry: each export registered as a version of the MLflow registered model
`MODEL_NAME` (`STREAMFIT_MLFLOW_TRACKING_URI`), its source the export's location.

The registry is told about an export once, after it is written (`ModelRegistry` is the
exporter's post-export hook), and never stops training: a failure is one log line and a count
in `streamfit_registry_failures_total`. The mlflow client is imported on first use; settings
only check that it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from service import __version__, metrics
from service.checkpoints import Checkpoint
from service.online_stats import PrequentialWindow

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# A tracking server (or Databricks) takes a model version source from a client only if it is
# not on the server's own disk; a database is written by this process directly.
SERVER_SCHEMES = frozenset({"http", "https", "databricks", "databricks-uc"})
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})
DATABASE_MODULES = ("sqlalchemy", "alembic")  # in mlflow, not in the mlflow-skinny client
TAG_PREFIX = "streamfit."
VERSION_TAG = f"{TAG_PREFIX}version"
# MLflow's client retries a failed request for about four minutes by default. One attempt per
# export, bounded in time, keeps a dead tracking server from holding the exporter: the next
# export is the retry. MLflow's own variables still win when they are set.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_scheme(uri: str) -> str:
    """The kind of store a tracking URI names, without a SQLAlchemy driver suffix.

    >>> tracking_scheme("postgresql+psycopg2://db/mlflow"), tracking_scheme("databricks")
    ('postgresql', 'databricks')
    """
    if uri in ("databricks", "databricks-uc"):
        return uri
    return urlsplit(uri).scheme.split("+")[0].lower()


def without_credentials(uri: str) -> str:
    """A URI fit for a message: user and password replaced.

    >>> without_credentials("postgresql://streamfit:s3cret@db:5432/mlflow")
    'postgresql://***@db:5432/mlflow'
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def is_local(location: str) -> bool:
    """True for a path or a `file:` URL, False for an object-store URL.

    >>> is_local("./exports"), is_local("file:///srv/exports"), is_local("s3://models/exports")
    (True, True, False)
    """
    return urlsplit(location).scheme in ("", "file")


def check_registry_settings(tracking_uri: str, export_dir: str | None) -> None:
    """ValueError (one line) unless the tracking URI names a model registry, there is an
    export to register (`EXPORT_DIR`) that the registry can take as a source, and the mlflow
    client is installed."""
    setting = f"STREAMFIT_MLFLOW_TRACKING_URI={without_credentials(tracking_uri)}"
    scheme = tracking_scheme(tracking_uri)
    if scheme not in SERVER_SCHEMES | DATABASE_SCHEMES:
        raise ValueError(
            f"{setting} is not a tracking URI with a model registry: use http(s)://host:port, "
            "databricks, or a database (sqlite:///path, postgresql://, mysql://, mssql://)"
        )
    if scheme in ("http", "https") and not urlsplit(tracking_uri).hostname:
        raise ValueError(f"{setting} names no host")
    if export_dir is None:
        raise ValueError(
            f"{setting} needs STREAMFIT_EXPORT_DIR: the exported SavedModel is what is registered"
        )
    if scheme in SERVER_SCHEMES and is_local(export_dir):
        raise ValueError(
            f"{setting}: a tracking server refuses a local path as a model source, and "
            f"STREAMFIT_EXPORT_DIR={export_dir} is one: export to an object store (s3://...) "
            "or register in a database (sqlite:///..., postgresql://...)"
        )
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError(f"{setting} needs the mlflow client: pip install 'streamfit[mlflow]'")
    if scheme in DATABASE_SCHEMES and not all(map(importlib.util.find_spec, DATABASE_MODULES)):
        raise ValueError(
            f"{setting}: writing the registry's database takes mlflow's database store, which "
            "the client alone lacks: pip install mlflow (and the database's driver)"
        )


def model_version_source(export: str | os.PathLike[str]) -> str:
    """An export's location as MLflow takes a model version source: a URL as it is, a local
    path as an absolute `file://` URL.

    >>> model_version_source("s3://models/exports/susy/3")
    's3://models/exports/susy/3'
    >>> model_version_source("/srv/exports/susy/3")
    'file:///srv/exports/susy/3'
    """
    text = os.fspath(export)
    return text if urlsplit(text).scheme else Path(text).absolute().as_uri()


def version_tags(checkpoint: Checkpoint) -> dict[str, str]:
    """The tags of a checkpoint's model version: what it learned, up to where, how well.

    The prequential metrics are those of the checkpoint's window (test-then-train over the
    most recent samples), named by its task; a metric of an empty window is left out.

    >>> state = {"samples_trained": 512, "prequential": [[512, 384, 256.0]]}
    >>> tags = version_tags(Checkpoint(3, state, {"susy-train:0": 512}, created_at=0))
    >>> tags["streamfit.version"], tags["streamfit.task"], tags["streamfit.samples_trained"]
    ('3', 'binary', '512')
    >>> tags["streamfit.offsets"], tags["streamfit.created_at"]
    ('{"susy-train:0": 512}', '1970-01-01T00:00:00+00:00')
    >>> tags["streamfit.prequential.accuracy"], tags["streamfit.prequential.loss"]
    ('0.75', '0.5')
    """
    window = PrequentialWindow.of_checkpoint(checkpoint.state)
    tags = {
        VERSION_TAG: str(checkpoint.version),
        f"{TAG_PREFIX}task": window.task.kind,
        f"{TAG_PREFIX}samples_trained": str(checkpoint.state.get("samples_trained", 0)),
        f"{TAG_PREFIX}offsets": json.dumps(checkpoint.offsets, sort_keys=True),
        f"{TAG_PREFIX}created_at": datetime.fromtimestamp(checkpoint.created_at, UTC).isoformat(
            timespec="seconds"
        ),
        f"{TAG_PREFIX}prequential.samples": str(window.count),
        f"{TAG_PREFIX}package_version": __version__,
    }
    for name, value in window.metrics().items():
        if value is not None:
            tags[f"{TAG_PREFIX}prequential.{name}"] = format(value, ".6g")
    return tags


class ModelRegistry:
    """Registers exports as versions of one MLflow registered model; never raises.

    One MLflow model version per streamfit version: the version is looked up by its
    `streamfit.version` tag before one is created, so registering an export again (a restart,
    a repeated hook) adds nothing. Each call registers the export it is given, the newest; a
    version whose registration failed is not filled in later, so the registry never grows
    faster than the exports. Calls are serialized (the lookup and the creation are one step).
    """

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._client: MlflowClient | None = None
        self._model_exists = False
        self._lock = threading.Lock()

    def __call__(self, version: int, export_uri: str, checkpoint: Checkpoint) -> None:
        """The exporter's post-export hook: `register`."""
        self.register(version, export_uri, checkpoint)

    def register(self, version: int, source_uri: str, checkpoint: Checkpoint) -> None:
        """Register the export of `version` at `source_uri` (a path or a URL), tagged from
        `checkpoint`, unless it is registered already. Failures are logged and counted."""
        with self._lock:
            try:
                created = self._register(version, model_version_source(source_uri), checkpoint)
            except Exception as exc:  # the registry must never stop training
                metrics.REGISTRY_FAILURES.inc()
                log.warning(
                    "model registration failed; the next export is registered as usual",
                    extra={
                        "model_name": self.model_name,
                        "version": version,
                        "error": f"{type(exc).__name__}: {_one_line(str(exc))}",
                    },
                )
                return
        if created is not None:
            log.info(
                "registered model version",
                extra={
                    "model_name": self.model_name,
                    "version": version,
                    "mlflow_version": created,
                },
            )

    def registered_version(self, version: int) -> str | None:
        """The MLflow version registered for streamfit `version`, or None (raises when the
        registry cannot be asked)."""
        found = self._connect().search_model_versions(
            f"name = '{self.model_name}' and tags.`{VERSION_TAG}` = '{version}'"
        )
        return str(found[0].version) if found else None

    def _register(self, version: int, source: str, checkpoint: Checkpoint) -> str | None:
        if self.registered_version(version) is not None:
            return None
        client = self._connect()
        self._ensure_registered_model(client)
        created = client.create_model_version(
            self.model_name, source, tags=version_tags(checkpoint), await_creation_for=0
        )
        return str(created.version)

    def _connect(self) -> MlflowClient:
        if self._client is None:
            for name, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri, self.tracking_uri)
        return self._client

    def _ensure_registered_model(self, client: MlflowClient) -> None:
        if self._model_exists:
            return
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(
                self.model_name,
                description="Trained online by streamfit; each version is an exported TF "
                f"SavedModel, tagged {VERSION_TAG} with its checkpoint version.",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        self._model_exists = True


def registry_for(settings: Any) -> ModelRegistry | None:
    """The registry the settings name (`MLFLOW_TRACKING_URI`, `MODEL_NAME`), or None."""
    if settings.mlflow_tracking_uri is None:
        return None
    return ModelRegistry(settings.mlflow_tracking_uri, settings.model_name)


def _one_line(text: str, limit: int = 600) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
