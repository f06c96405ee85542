"""Export: each checkpoint as a TF Serving model version, `<EXPORT_DIR>/<MODEL_NAME>/<version>/`.

A version directory is a TF SavedModel whose `serving_default` signature takes raw features,
as the service's own prediction routes do, and returns the task's predictions:

- inputs: `features`, float32 [n, F], for a positional model; or one input per named feature,
  under the feature's name (float32 or string, [n] or [n, 1] as the model takes it);
- one output, named as the service's Open Inference output (`Task.output_name`):
  `probability` [n] (binary: of the positive class), `probabilities` [n, K] (multiclass, in
  class order) or `prediction` [n] (regression).

The checkpoint's standardizer runs inside the graph when the model's plan standardizes, so a
client sends what it would send to the service. The Keras model is rebuilt from the checkpoint
alone (its portable config; the built-in architecture for checkpoints older than
`STREAMFIT_MODEL`), so the user's code is not needed.

TF Serving polls the model directory and loads any numeric subdirectory, so a version must
appear whole. In a local directory it is staged under a dot-name (which TF Serving ignores),
flushed and renamed into place. An object store has no rename: `saved_model.pb`, without which
nothing loads, is uploaded last and deleted first. `EXPORT_KEEP` bounds how many versions stay.

`Exporter` does this on its own thread, off the learner's path: the checkpointer hands it
each checkpoint it writes; if exports fall behind, only the newest waiting one is kept.
TensorFlow loads on the first export, not on import (the predictor role imports this module).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service import metrics
from service.checkpoints import Checkpoint
from service.model.inputs import InputSpec
from service.registry import registry_for
from service.serving.keras_forward import input_signature
from service.serving.snapshot import ModelSnapshot, snapshot_from_checkpoint
from service.storage import LocalStorage, ObjectStorage, fsync, open_storage

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
POSITIONAL_INPUT = "features"
GRAPH_FILE = "saved_model.pb"  # a SavedModel loads only once this is there
# The names TensorFlow accepts for a signature's inputs.
INPUT_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")

PostExportHook = Callable[[int, str, Checkpoint], None]
"""Called after a version is visible: (version, where it is, the checkpoint)."""

WriteVersion = Callable[[Path], None]


class ExportError(Exception):
    """A checkpoint's model cannot be exported as a SavedModel (one line saying why)."""


# -- the SavedModel ------------------------------------------------------------------------------


@dataclass
class _ServingGraph:
    """A rebuilt Keras model inside a `tf.Module` with the serving function, for one model."""

    key: tuple[Any, ...]
    module: Any
    model: Any


class SavedModelWriter:
    """Writes checkpoints' models as SavedModels. The serving graph is built once per model and
    reused for its next checkpoints (only weights and standardizer change), so exports neither
    retrace nor grow the process. One thread at a time."""

    def __init__(self) -> None:
        self._graph: _ServingGraph | None = None

    def write(self, checkpoint: Checkpoint, directory: Path) -> None:
        """The checkpoint's model as a SavedModel in `directory` (ExportError if it cannot be)."""
        from service.training.tf_runtime import tf

        snapshot = snapshot_from_checkpoint(checkpoint)  # the service's own view of it
        graph = self._graph_for(checkpoint.state, snapshot)
        graph.model.set_weights(list(checkpoint.state["weights"]))
        if snapshot.standardizes:
            graph.module.mean.assign(snapshot.mean)
            graph.module.std.assign(snapshot.std)
        module = graph.module
        tf.saved_model.save(module, str(directory), signatures={SIGNATURE: module.serve})

    def _graph_for(self, state: dict[str, Any], snapshot: ModelSnapshot) -> _ServingGraph:
        described = state.get("model") or {}
        key = (
            described.get("config") or state.get("arch"),
            snapshot.input_spec,
            snapshot.task,
            snapshot.standardizes,
        )
        if self._graph is None or self._graph.key != key:
            model = _keras_model(state, snapshot)
            self._graph = _ServingGraph(key, _serving_module(model, snapshot), model)
        return self._graph


def _keras_model(state: dict[str, Any], snapshot: ModelSnapshot) -> Any:
    """The checkpoint's Keras model (weights not loaded): from its portable config, or the
    built-in architecture that a checkpoint older than `STREAMFIT_MODEL` names."""
    from service.training.tf_runtime import keras

    config = (state.get("model") or {}).get("config")
    try:
        if config is not None:
            return keras.models.model_from_json(config)
        from service.model.resolve import build_builtin

        return build_builtin(str(state.get("arch", "mlp")), snapshot.num_features, snapshot.task)
    except Exception as exc:  # Keras raises many kinds for a config it cannot rebuild
        raise ExportError(f"cannot rebuild the model: {type(exc).__name__}: {exc}") from exc


def _serving_module(model: Any, snapshot: ModelSnapshot) -> Any:
    """A `tf.Module` holding the model (and the standardizer's mean and std as variables) and
    the serving function: raw features in, the task's predictions out."""
    from service.training.tf_runtime import tf

    task, standardizes = snapshot.task, snapshot.standardizes
    module = tf.Module()
    module.model = model
    if standardizes:
        module.mean = tf.Variable(snapshot.mean, dtype=tf.float64, trainable=False, name="mean")
        module.std = tf.Variable(snapshot.std, dtype=tf.float64, trainable=False, name="std")

    def serve(x: Any) -> dict[str, Any]:
        if standardizes:
            # In float64, as ModelSnapshot.outputs does (features can be large, e.g. 1e5 +- 1).
            x = tf.cast((tf.cast(x, tf.float64) - module.mean) / module.std, tf.float32)
        outputs = tf.cast(module.model(x, training=False), tf.float32)
        # As ModelSnapshot.predict: K probabilities, or the one column.
        return {task.output_name: outputs if task.kind == "multiclass" else outputs[:, 0]}

    module.serve = tf.function(serve, input_signature=[named_signature(snapshot.input_spec)])
    return module


def named_signature(inputs: InputSpec) -> Any:
    """The model's input signature with the names a SavedModel signature gives its inputs:
    `features`, or each feature's own name."""
    from service.training.tf_runtime import tf

    spec = input_signature(inputs)
    if not inputs.named:
        return tf.TensorSpec.from_spec(spec, name=POSITIONAL_INPUT)
    for name in spec:
        if not INPUT_NAME.match(name):
            raise ExportError(
                f"feature {name!r} cannot name a SavedModel input (letters, digits, and "
                "_ . / > - after the first character)"
            )
    return {name: tf.TensorSpec.from_spec(column, name=name) for name, column in spec.items()}


# -- where versions go ---------------------------------------------------------------------------


class ExportTarget(Protocol):
    """A model directory of numbered versions that appear whole."""

    location: str

    def versions(self) -> list[int]: ...  # oldest first
    def publish(self, version: int, write: WriteVersion) -> str: ...  # where it is
    def remove(self, version: int) -> None: ...


class DirectoryTarget:
    """A local directory: a version is staged under a dot-name, flushed, and renamed into place
    (TF Serving skips names that are not numbers, and a rename is atomic)."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self.directory = storage.directory
        self.location = storage.location

    def versions(self) -> list[int]:
        return _numbered(p.name for p in self._entries() if p.is_dir())

    def _entries(self) -> list[Path]:
        return list(self.directory.iterdir()) if self.directory.is_dir() else []

    def publish(self, version: int, write: WriteVersion) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in self.storage.remove_orphans():
            log.info("removed a staged export of a dead writer", extra={"file": name})
        staging = self._aside(str(version))
        final = self.directory / str(version)
        try:
            write(staging)
            for path in sorted(staging.rglob("*"), reverse=True):  # files, then their folders
                fsync(path)
            fsync(staging)
            if final.exists():  # a version number used before (a new checkpoint directory)
                self.remove(version)
            os.replace(staging, final)
            fsync(self.directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return str(final)

    def remove(self, version: int) -> None:
        """Out of sight first (one rename), then deleted."""
        aside = self._aside(f"{version}-removed")
        os.replace(self.directory / str(version), aside)
        shutil.rmtree(aside, ignore_errors=True)

    def _aside(self, label: str) -> Path:
        # The writer's pid in the name: `LocalStorage.remove_orphans` clears a dead one's.
        return self.directory / f".{label}.{os.getpid()}.tmp"


class ObjectStoreTarget:
    """An object-store prefix: a version is staged locally, then uploaded with
    `saved_model.pb` last; removed with `saved_model.pb` first."""

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage
        self.location = storage.location.rstrip("/")

    def versions(self) -> list[int]:
        return _numbered(self.storage.names())

    def publish(self, version: int, write: WriteVersion) -> str:
        if self.storage.tree(str(version)):  # a version number used before
            self.remove(version)
        with tempfile.TemporaryDirectory(prefix="streamfit-export-") as staging:
            root = Path(staging) / str(version)
            write(root)
            files = [path for path in root.rglob("*") if path.is_file()]
            for path in sorted(files, key=lambda p: (p.name == GRAPH_FILE, p.as_posix())):
                name = f"{version}/{path.relative_to(root).as_posix()}"
                self.storage.write(name, path.read_bytes())
        return f"{self.location}/{version}"

    def remove(self, version: int) -> None:
        graph = f"{version}/{GRAPH_FILE}"
        for name in sorted(self.storage.tree(str(version)), key=lambda n: n != graph):
            self.storage.delete(name)


def _numbered(names: Iterable[str]) -> list[int]:
    """Version numbers among names (TF Serving loads numeric directories only), oldest first."""
    return sorted(int(name) for name in names if name.isdigit())


def target_for(location: str, options: dict[str, Any] | None = None) -> ExportTarget:
    """The model directory `location` names (a path or a URL, as `CHECKPOINT_DIR`)."""
    storage = open_storage(location, options)
    if isinstance(storage, LocalStorage):
        return DirectoryTarget(storage)
    assert isinstance(storage, ObjectStorage)
    return ObjectStoreTarget(storage)


# -- the exporter --------------------------------------------------------------------------------


class Exporter:
    """Exports checkpoints to one model directory and keeps it bounded.

    `submit` hands over a checkpoint and returns at once; the export thread (started on the
    first) writes it. A checkpoint still waiting when a newer one arrives is skipped (logged):
    TF Serving wants the newest version, not every one. A failed export logs one line and
    counts in `streamfit_export_failures_total`; nothing else stops. `hooks` run after each
    version is visible (a model registry, say).
    """

    def __init__(
        self, target: ExportTarget, keep: int = 5, hooks: Sequence[PostExportHook] = ()
    ) -> None:
        self.target = target
        self.keep = keep
        self.hooks: list[PostExportHook] = list(hooks)
        self._writer = SavedModelWriter()
        self._writing = threading.Lock()
        self._wake = threading.Condition()
        self._pending: Checkpoint | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def location(self) -> str:
        return self.target.location

    # -- on the export thread ------------------------------------------------------------------

    def submit(self, checkpoint: Checkpoint) -> None:
        """Export `checkpoint` on the export thread; replaces one still waiting."""
        with self._wake:
            if self._closed:
                log.warning("export skipped: shutting down", extra={"version": checkpoint.version})
                return
            if self._pending is not None:
                log.warning(
                    "export skipped: a newer checkpoint came before it was exported",
                    extra={"version": self._pending.version, "newer": checkpoint.version},
                )
            self._pending = checkpoint
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="streamfit-export", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                checkpoint, self._pending = self._pending, None
            if checkpoint is None:
                return
            self.export_quietly(checkpoint)

    def close(self) -> None:
        """Finish the export in progress and the newest waiting one; end the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    # -- in the caller's thread ----------------------------------------------------------------

    def export_quietly(self, checkpoint: Checkpoint) -> str | None:
        """`export`, a failure logged and counted instead of raised; where it is, or None."""
        started = time.perf_counter()
        try:
            where = self.export(checkpoint)
        except Exception as exc:  # a failed export must never stop training
            metrics.EXPORT_FAILURES.inc()
            log.error(
                "export failed",
                extra={"version": checkpoint.version, "error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        elapsed = time.perf_counter() - started
        metrics.EXPORT_DURATION.observe(elapsed)
        metrics.EXPORT_VERSION.set(checkpoint.version)
        log.info(
            "model exported",
            extra={"version": checkpoint.version, "where": where, "seconds": round(elapsed, 3)},
        )
        return where

    def export(self, checkpoint: Checkpoint) -> str:
        """Write `checkpoint` as version `<version>`, make it visible whole, drop versions
        beyond `keep`, then run the hooks. Where the version is (a path or a URL)."""
        with self._writing:
            where = self.target.publish(
                checkpoint.version, lambda directory: self._writer.write(checkpoint, directory)
            )
            for version in self.target.versions()[: -self.keep]:
                self.target.remove(version)
        for hook in self.hooks:
            try:
                hook(checkpoint.version, where, checkpoint)
            except Exception as exc:  # someone else's step: the export itself stands
                log.error(
                    "post-export hook failed",
                    extra={"version": checkpoint.version, "error": f"{type(exc).__name__}: {exc}"},
                )
        return where


def exporter_for(settings: Any) -> Exporter | None:
    """The exporter the settings ask for (`EXPORT_DIR`, `EXPORT_KEEP`, `MODEL_NAME`), or None;
    with `MLFLOW_TRACKING_URI`, each export is then registered in MLflow (`service.registry`)."""
    if not settings.export_dir:
        return None
    location = f"{settings.export_dir.rstrip('/')}/{settings.model_name}"
    registry = registry_for(settings)
    return Exporter(
        target_for(location, settings.storage_options),
        settings.export_keep,
        hooks=[registry] if registry is not None else (),
    )
