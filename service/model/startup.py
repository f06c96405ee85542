"""Start-up check: the configured model (and challenger) fits the task, the features, the
record format and the newest checkpoint — or start-up stops with one line saying why
(`SettingsError`).

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
    """The task and inputs of the configured model, checked; SettingsError (one line) if not.

    A challenger (CHALLENGER_MODEL) must fit the same task and take the same inputs."""
    try:
        task = Task.of(settings)
        inputs, fingerprint = _inputs_of(settings)
    except ValueError as exc:
        raise SettingsError(f"invalid model settings: {exc}") from None
    _check_records(settings, inputs)
    fingerprints = {settings.model_spec: fingerprint}
    if settings.challenger_model is not None and settings.role != "predictor":
        spec = settings.challenger_model
        try:
            theirs, fingerprints[spec] = _inputs_of(settings.with_model(spec))
        except ValueError as exc:
            detail = str(exc).replace("STREAMFIT_MODEL=", "")  # the messages name MODEL
            raise SettingsError(f"invalid setting STREAMFIT_CHALLENGER_MODEL: {detail}") from None
        if theirs.state() != inputs.state():
            raise SettingsError(
                f"invalid setting STREAMFIT_CHALLENGER_MODEL: {spec} takes {theirs.width} "
                f"features {list(theirs.names) or ''}, the champion "
                f"({settings.model_spec}) {inputs.width} {list(inputs.names) or ''}".rstrip()
            )
    if with_checkpoint and settings.role != "predictor":
        _check_checkpoint(settings, task, inputs, fingerprints)
    return task, inputs


def _inputs_of(settings: Settings) -> tuple[InputSpec, str | None]:
    """The inputs and architecture fingerprint of MODEL (ValueError if it does not fit): a
    built-in's from the settings alone, a user's model built once."""
    if settings.builtin_model:
        return declared_inputs(settings), None
    from service.model.resolve import ModelMismatch, resolve_model

    try:
        _, plan = resolve_model(settings)
    except ModelMismatch as exc:
        raise ValueError(str(exc)) from None
    return plan.inputs, plan.fingerprint


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
    settings: Settings, task: Task, inputs: InputSpec, fingerprints: dict[str, str | None]
) -> None:
    """The newest checkpoint's model is the configured one (the checkpoint wins on restart:
    to start another model, point CHECKPOINT_DIR elsewhere). After a promotion its champion
    is CHALLENGER_MODEL's, which is the configured pair in the roles the checkpoint names."""
    store = store_for(settings)
    try:
        checkpoint = store.latest()
    except (CheckpointError, OSError):
        return  # the trainer reports an unreadable store itself
    if checkpoint is None:
        return
    spec = settings.model_spec
    stored_champion = (checkpoint.state.get("roles") or {}).get("champion")
    if stored_champion is not None and stored_champion == settings.challenger_model:
        spec = stored_champion  # promoted: the checkpoint's roles win
    problem = _difference(checkpoint.state, spec, task, inputs, fingerprints.get(spec))
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
