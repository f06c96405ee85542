"""Examples: each example's model, built with the settings its README gives, is one that
`resolve_model` accepts (catches drift between the READMEs and the code)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from service.model.resolve import resolve_model
from service.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPORT = re.compile(r"^export STREAMFIT_([A-Z_]+)=(\S+)$", re.MULTILINE)


def readme_settings(example: str, **replaced: str) -> Settings:
    """The `export STREAMFIT_...` lines of an example's README as Settings."""
    found = dict(EXPORT.findall((EXAMPLES / example / "README.md").read_text()))
    assert found, f"{example}/README.md exports no settings"
    values = {name.lower(): value for name, value in found.items()}
    return Settings(**{**values, **replaced})


def test_fraud_factory_takes_named_numbers_and_a_string() -> None:
    from examples.fraud_named_json.make_data import transactions

    settings = readme_settings("fraud_named_json")
    assert settings.model_spec == "examples.fraud_named_json.model:build"
    model, plan = resolve_model(settings)
    assert plan.inputs.named and plan.inputs.names == ("amount", "country", "hour")
    assert plan.inputs.kinds == ("number", "string", "number")
    assert plan.task.kind == "binary" and plan.task.classes == ("legit", "fraud")
    assert plan.compiled and not plan.standardize
    rows = transactions(64)
    outputs = np.asarray(
        model(
            {
                "amount": np.array([[r[0]] for r in rows], np.float32),
                "country": np.array([[r[1]] for r in rows], object),
                "hour": np.array([[r[2]] for r in rows], np.float32),
            }
        )
    )
    assert outputs.shape == (64, 1) and ((outputs > 0) & (outputs < 1)).all()
    assert settings.label_field == "is_fraud"


def test_fraud_data_header_names_the_inputs_and_the_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from examples.fraud_named_json import make_data

    output = tmp_path / "fraud.csv"
    monkeypatch.setattr(sys, "argv", ["make_data.py", "--rows", "50", "--output", str(output)])
    make_data.main()
    with output.open() as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["amount", "country", "hour", readme_settings("fraud_named_json").label_field]
    assert len(rows) == 50
    assert make_data.transactions(50) == make_data.transactions(50), "deterministic"


def test_iris_saved_model_is_accepted(tmp_path: Path) -> None:
    from examples.iris_multiclass.make_data import CLASSES, FEATURES, rows
    from examples.iris_multiclass.save_model import save

    path = save(tmp_path / "iris.keras")
    settings = readme_settings("iris_multiclass", model=str(path))
    assert readme_settings("iris_multiclass").model_spec == "iris.keras"
    model, plan = resolve_model(settings)
    assert plan.task.kind == "multiclass" and plan.task.classes == CLASSES
    assert plan.inputs.names == FEATURES and not plan.inputs.named
    assert plan.standardize and not plan.compiled
    data = rows(repeat=1)
    assert len(data) == 150 and {r[-1] for r in data} == set(CLASSES)
    outputs = np.asarray(model(np.array([r[:4] for r in data[:5]], np.float32)))
    assert outputs.shape == (5, 3) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-5)


def test_diabetes_regression_on_the_builtin_mlp() -> None:
    from examples.housing_regression.make_data import FEATURES, rows

    settings = readme_settings("housing_regression")
    model, plan = resolve_model(settings)
    assert plan.spec == "mlp" and plan.task.kind == "regression"
    assert plan.inputs.names == FEATURES and plan.standardize
    assert plan.task.metric_names == ("mae", "rmse")
    data = rows(repeat=1)
    assert len(data) == 442 and len(data[0]) == 1 + len(FEATURES)


@pytest.mark.parametrize("example", ["fraud_named_json", "iris_multiclass", "housing_regression"])
def test_readme_shows_the_commands(example: str) -> None:
    text = (EXAMPLES / example / "README.md").read_text()
    for command in ("streamfit broker", "streamfit produce", "streamfit serve", "curl -s"):
        assert command in text, f"{example}/README.md lacks {command!r}"
    assert (EXAMPLES / example / "__init__.py").exists()
