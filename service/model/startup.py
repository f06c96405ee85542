"""Start-up check: the configured model fits the task, the features, the record format and
the newest checkpoint — or start-up stops with one line saying why (`SettingsError`).

Run before the server starts. A built-in model is checked from the settings alone (no
TensorFlow); a user's model (`.keras` file or factory) is built once here, so that a model
that cannot train the declared task stops the process instead of a half-started service.
"""

from __future__ import annotations

from typing import Any

from service.checkpoints import CheckpointError, store_for
from service.model.inputs import InputSpec, declared_inputs
from service.model.task import Task
from service.settings import Settings, SettingsError


def check_model(settings: Settings, *, with_checkpoint: bool = True) -> tuple[Task, InputSpec]:
    """The task and inputs of the configured model, checked; SettingsError (one line) if not."""
    try:
        task = Task.of(settings)
        if settings.builtin_model:
            inputs = declared_inputs(settings)
            fingerprint = None
        else:
            from service.model.resolve import ModelMismatch, resolve_model

            try:
                _, plan = resolve_model(settings)
            except ModelMismatch as exc:
                raise ValueError(str(exc)) from None
            inputs, fingerprint = plan.inputs, plan.fingerprint
    except ValueError as exc:
        raise SettingsError(f"invalid model settings: {exc}") from None
    _check_records(settings, inputs)
    if with_checkpoint and settings.role != "predictor":
        _check_checkpoint(settings, task, inputs, fingerprint)
    return task, inputs


def _check_records(settings: Settings, inputs: InputSpec) -> None:
    if settings.message_format == "csv" and not inputs.numeric:
        raise SettingsError(
            "invalid setting STREAMFIT_MESSAGE_FORMAT: csv records are numeric, and the model "
            "has string inputs: use json or avro"
        )
    if settings.message_format == "avro" and not inputs.has_names:
        raise SettingsError(
            "invalid setting STREAMFIT_MESSAGE_FORMAT: avro fields are read by name: set "
            "STREAMFIT_FEATURES (or name the model's inputs)"
        )
    if settings.labels_topic and inputs.named:
        raise SettingsError(
            "invalid setting STREAMFIT_LABELS_TOPIC: delayed labels join predictions of one "
            "[n, F] input; this model takes named inputs"
        )


def _check_checkpoint(
    settings: Settings, task: Task, inputs: InputSpec, fingerprint: str | None
) -> None:
    """The newest checkpoint's model is the configured one (the checkpoint wins on restart:
    to start another model, point CHECKPOINT_DIR elsewhere)."""
    store = store_for(settings)
    try:
        checkpoint = store.latest()
    except (CheckpointError, OSError):
        return  # the trainer reports an unreadable store itself
    if checkpoint is None:
        return
    problem = _difference(checkpoint.state, settings.model_spec, task, inputs, fingerprint)
    if problem:
        raise SettingsError(
            f"STREAMFIT_CHECKPOINT_DIR={settings.checkpoint_dir} holds checkpoint "
            f"{checkpoint.version} of another model ({problem}): use another CHECKPOINT_DIR "
            "or set the model it was trained with"
        )


def _difference(
    state: dict[str, Any], spec: str, task: Task, inputs: InputSpec, fingerprint: str | None
) -> str | None:
    described = state.get("model")
    if described is None:  # written before STREAMFIT_MODEL: a built-in binary model
        theirs = (state.get("arch"), Task(), InputSpec.positional(int(state["num_features"])))
        described = {
            "spec": theirs[0],
            "task": theirs[1].state(),
            "inputs": theirs[2].state(),
        }
    if described.get("spec") != spec:
        return f"MODEL {described.get('spec')}, not {spec}"
    if described.get("task") != task.state():
        return f"task {Task.from_state(described.get('task'))}, not {task}"
    theirs_inputs = InputSpec.from_state(described.get("inputs"), 0)
    if theirs_inputs.width != inputs.width or (
        theirs_inputs.names and inputs.names and theirs_inputs.names != inputs.names
    ):
        return f"{theirs_inputs.width} features {list(theirs_inputs.names)}, not {inputs.width}"
    if fingerprint is not None and described.get("fingerprint") not in (None, fingerprint):
        return "another architecture (its Keras config differs)"
    return None
