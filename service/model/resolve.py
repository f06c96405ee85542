"""Resolve: the Keras model `STREAMFIT_MODEL` names, checked against the task and the features.

`MODEL` is `mlp` or `linear` (built in; their output layer follows the task), a path to a
`.keras` file (its weights, and its optimizer state if compiled, are the initial state), or
`package.module:function`, a factory called as `function(num_features=F, task=T,
num_classes=K)`. Whatever it is, `resolve_model` returns the model and a `ModelPlan`: the
task, the inputs (positional [n, F] or one per named feature), whether the service
standardizes, and a fingerprint of the architecture that checkpoints record, so that a
restart with another model stops instead of loading weights into the wrong one.

A model that does not fit raises `ModelMismatch` with one line saying why.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.model.inputs import InputSpec, Kind, settings_width
from service.model.task import Task
from service.settings import Settings
from service.training.tf_runtime import keras

BUILTIN = ("mlp", "linear")
DENSE_ONLY_LAYERS = ("InputLayer", "Dense", "Dropout")
SERVABLE_ACTIVATIONS = ("relu", "sigmoid", "linear", "tanh", "softmax")


class ModelMismatch(ValueError):
    """The model cannot serve the configured task or features (one line, naming why)."""


@dataclass(frozen=True)
class ModelPlan:
    """What the learner and every serving path need to know about the model."""

    spec: str
    task: Task
    inputs: InputSpec
    standardize: bool
    fingerprint: str
    compiled: bool  # the model brings its own optimizer and loss

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records (with the model's config and weights)."""
        return {
            "spec": self.spec,
            "task": self.task.state(),
            "inputs": self.inputs.state(),
            "standardize": self.standardize,
            "fingerprint": self.fingerprint,
        }


def task_of(settings: Settings) -> Task:
    """The task of the settings (ModelMismatch if its settings disagree)."""
    try:
        return Task.of(settings)
    except ValueError as exc:
        raise ModelMismatch(str(exc)) from None


def declared_width(settings: Settings) -> int:
    """Features the settings name (ModelMismatch when FEATURES and NUM_FEATURES disagree)."""
    try:
        return settings_width(settings)
    except ValueError as exc:
        raise ModelMismatch(str(exc)) from None


def build_builtin(arch: str, width: int, task: Task) -> keras.Model:
    """The tutorial's MLP (or a linear model), its output layer following the task."""
    head = {"binary": "sigmoid", "multiclass": "softmax", "regression": "linear"}[task.kind]
    hidden: list[Any] = []
    if arch == "mlp":
        hidden = [
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.4),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.4),
        ]
    elif arch != "linear":
        raise ModelMismatch(f"unknown built-in model {arch!r}")
    return keras.Sequential(
        [keras.Input((width,)), *hidden, keras.layers.Dense(task.outputs, activation=head)],
        name=f"streamfit_{arch}",
    )


def load_user_model(spec: str, width: int, task: Task) -> keras.Model:
    """A `.keras` file or a `module:function` factory's model (ModelMismatch if neither)."""
    if spec.endswith(".keras"):
        path = Path(spec)
        if not path.is_file():
            raise ModelMismatch(f"STREAMFIT_MODEL={spec}: no such file")
        try:
            return keras.saving.load_model(path, compile=True)
        except Exception as exc:  # Keras raises many kinds for a bad file
            raise ModelMismatch(
                f"STREAMFIT_MODEL={spec}: cannot load: {_first_line(exc)}"
            ) from None
    module_name, colon, function_name = spec.partition(":")
    if not colon or not module_name or not function_name.isidentifier():
        raise ModelMismatch(
            f"STREAMFIT_MODEL={spec} is not mlp, linear, a .keras file or module:function"
        )
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` has it
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ModelMismatch(f"STREAMFIT_MODEL={spec}: {_first_line(exc)}") from None
    try:
        model = factory(num_features=width, task=task.kind, num_classes=task.outputs)
    except Exception as exc:
        raise ModelMismatch(f"STREAMFIT_MODEL={spec} raised {_first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelMismatch(
            f"STREAMFIT_MODEL={spec} returned {type(model).__name__}, not a keras.Model"
        )
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def resolve_model(settings: Settings) -> tuple[keras.Model, ModelPlan]:
    """Build the configured model and check it fits the task and features."""
    task = task_of(settings)
    spec = settings.model_spec
    keras.utils.set_random_seed(settings.seed)
    if spec in BUILTIN:
        model = build_builtin(spec, declared_width(settings), task)
    else:
        model = load_user_model(spec, declared_width(settings), task)
    inputs = inputs_of(model, settings)
    check_output(model, task, spec, inputs)
    standardize = settings.standardize == "on" or (
        settings.standardize == "auto" and spec in BUILTIN
    )
    if standardize and inputs.named:
        raise ModelMismatch(
            "STREAMFIT_STANDARDIZE=on needs a model with one [n, F] input; this one takes named "
            "inputs: standardize inside it (keras.layers.Normalization)"
        )
    compiled = getattr(model, "optimizer", None) is not None and bool(
        getattr(model, "compiled", False)
    )
    plan = ModelPlan(spec, task, inputs, standardize, fingerprint(model, inputs), compiled)
    return model, plan


def inputs_of(model: keras.Model, settings: Settings) -> InputSpec:
    """The model's inputs as features: one matrix [n, F], or one named input per feature."""
    if not _has_graph(model):  # a subclassed model: called on one [n, F] matrix
        width = declared_width(settings)
        model(keras.ops.zeros((1, width)))  # builds its weights
        return InputSpec.positional(width, settings.features)
    tensors = list(model.inputs)
    named = not isinstance(model, keras.Sequential) and (
        isinstance(model.input, dict) or len(tensors) > 1
    )
    if not named:
        (tensor,) = tensors
        shape = tuple(tensor.shape)
        if len(shape) != 2 or shape[1] is None or "string" in str(tensor.dtype):
            raise ModelMismatch(
                f"the model's input has shape {shape}: a single input must be numbers [n, F] "
                "(name the inputs for string or per-feature inputs)"
            )
        width = int(shape[1])
        explicit = settings.features or "num_features" in settings.model_fields_set
        if explicit and width != declared_width(settings):
            raise ModelMismatch(
                f"the model takes {width} features but the settings declare "
                f"{declared_width(settings)} (STREAMFIT_FEATURES / STREAMFIT_NUM_FEATURES)"
            )
        return InputSpec.positional(width, settings.features)
    by_name: dict[str, Any] = {}
    for tensor in tensors:
        name = getattr(tensor, "name", None) or ""
        shape = tuple(tensor.shape)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise ModelMismatch(
                f"model input {name!r} has shape {shape}: named inputs take one value per "
                "instance ([n] or [n, 1])"
            )
        by_name[name] = tensor
    names = tuple(settings.features) or tuple(by_name)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ModelMismatch(
            f"STREAMFIT_FEATURES names {missing[0]!r}, which is not a model input "
            f"(inputs: {', '.join(by_name)})"
        )
    unfed = [n for n in by_name if n not in names]
    if unfed:
        raise ModelMismatch(f"model input {unfed[0]!r} is missing from STREAMFIT_FEATURES")
    if "num_features" in settings.model_fields_set and settings.num_features != len(names):
        raise ModelMismatch(
            f"the model has {len(names)} named inputs but STREAMFIT_NUM_FEATURES is "
            f"{settings.num_features}: unset it"
        )
    kinds: list[Kind] = ["string" if "string" in str(by_name[n].dtype) else "number" for n in names]
    ranks = tuple(len(tuple(by_name[n].shape)) for n in names)
    return InputSpec(names, tuple(kinds), named=True, ranks=ranks)


def _has_graph(model: keras.Model) -> bool:
    """Functional and Sequential models know their inputs; subclassed ones do not."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def check_output(model: keras.Model, task: Task, spec: str, inputs: InputSpec) -> None:
    if _has_graph(model):
        outputs = list(model.outputs)
        if len(outputs) != 1:
            raise ModelMismatch(f"STREAMFIT_MODEL={spec} has {len(outputs)} outputs; one is needed")
        shape = tuple(outputs[0].shape)
    else:
        shape = (None, *tuple(model(keras.ops.zeros((1, inputs.width))).shape)[1:])
    width = shape[-1] if len(shape) == 2 else None
    if width != task.outputs:
        raise ModelMismatch(
            f"STREAMFIT_MODEL={spec} outputs shape {shape}; TASK={task.kind} needs "
            f"[n, {task.outputs}]"
        )


def fingerprint(model: keras.Model, inputs: InputSpec) -> str:
    """A hash of the architecture: each layer's class and configuration (without the names
    Keras numbers per process), the named inputs and the weight shapes."""
    layers = [[type(layer).__name__, _without_names(layer.get_config())] for layer in model.layers]
    described = {
        "layers": layers,
        "inputs": list(inputs.names) if inputs.named else inputs.width,
        "weights": [list(w.shape) for w in model.weights],
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_names(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list | tuple):
        return [_without_names(v) for v in config]
    return config


def portable_config(model: keras.Model) -> str:
    """The model's Keras config as JSON, with adapted lookup vocabularies written in, so a
    process without the user's code rebuilds it (`keras.models.model_from_json`)."""
    config = json.loads(model.to_json())
    vocabularies = {
        layer.name: layer.get_vocabulary(include_special_tokens=False)
        for layer in model.layers
        if hasattr(layer, "get_vocabulary") and layer.get_config().get("vocabulary") is None
    }
    if vocabularies:
        for layer_config in config.get("config", {}).get("layers", []):
            inner = layer_config.get("config", {})
            if inner.get("name") in vocabularies:
                inner["vocabulary"] = vocabularies[inner["name"]]
    return json.dumps(config)


def dense_activations(model: keras.Model, inputs: InputSpec) -> list[str] | None:
    """Activations of a Sequential chain of Dense layers (Dropout between), which the NumPy
    fast path serves; None for any other model (functional and subclassed models included:
    their layers may be wired in another order than they are listed)."""
    if inputs.named or not isinstance(model, keras.Sequential):
        return None
    activations: list[str] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in DENSE_ONLY_LAYERS:
            return None
        if kind == "Dense":
            config = layer.get_config()
            if not config.get("use_bias", True) or config["activation"] not in SERVABLE_ACTIVATIONS:
                return None
            activations.append(config["activation"])
    if len(model.weights) != 2 * len(activations) or not activations:
        return None
    return activations
