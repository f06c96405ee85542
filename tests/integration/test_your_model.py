"""Your model, your task, your records: user models, multiclass and regression, named JSON and
Avro records, against the embedded broker and real service processes.

Covered pairwise: a factory with named inputs and a string feature (binary, named JSON, both
roles, restart), a compiled `.keras` file (multiclass on iris, CSV keyed by class name, then
`streamfit score`), the built-in MLP (regression on Friedman #1, Avro through a Schema
Registry stand-in). Predictions are compared with the Keras model's own output on the
checkpoint's weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.checkpoints import CheckpointStore
from tests.support import ROOT, consume_all, produce_pairs, wait_for
from tests.user_models import COUNTRIES, save_iris_model

pytestmark = pytest.mark.timeout(400)


def keras_outputs(checkpoint_dir: Path, inputs: Any) -> tuple[int, np.ndarray]:
    """(version, outputs) of the newest checkpoint's model rebuilt by Keras from its config."""
    import keras

    checkpoint = CheckpointStore(checkpoint_dir, 5).latest()
    assert checkpoint is not None
    model = keras.models.model_from_json(checkpoint.state["model"]["config"])
    model.set_weights(checkpoint.state["weights"])
    return checkpoint.version, np.asarray(model(inputs, training=False))


def payments(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        amount = float(np.round(rng.gamma(2.0, 25.0), 2))
        country = str(rng.choice(COUNTRIES))
        hour = float(rng.integers(0, 24))
        fraud = (country == "US" and amount > 60) or hour < 6
        rows.append(
            {
                "amount": amount,
                "country": country,
                "hour": hour,
                "is_fraud": "fraud" if fraud else "legit",
            }
        )
    return rows


def test_a_functional_model_with_a_string_feature_from_named_json_by_both_roles(
    service_factory: Any, broker: Any, topic: str, tmp_path: Path
) -> None:
    rows = payments(3000, seed=1)
    bad = [
        {"amount": 5.0, "hour": 3.0, "is_fraud": "legit"},  # missing_field: country
        {"amount": "5", "country": "FR", "hour": 3.0, "is_fraud": "legit"},  # bad_type
        {"amount": 5.0, "country": "FR", "hour": 3.0, "is_fraud": "maybe"},  # unknown_class
    ]
    pairs = [(None, json.dumps(r).encode()) for r in [*rows[:1500], *bad, *rows[1500:]]]
    produce_pairs(broker.bootstrap, topic, pairs, partitions=2)
    settings = {
        "model": "tests.user_models:payments",
        "message_format": "json",
        "classes": "legit,fraud",
        "label_field": "is_fraud",
        "snapshot_interval_s": 0,
        "batch_size": 16,
        "learning_rate": 0.02,
    }
    service = service_factory(**settings).start()
    model = service.wait_trained(3000)
    assert model["task"] == "binary" and model["model"] == "tests.user_models:payments"
    assert model["features"] == ["amount", "country", "hour"]
    dlq = consume_all(broker.bootstrap, f"{topic}.dlq", 3)
    reasons = sorted(dict(r.headers)["error"].decode().split(":")[0] for r in dlq)
    assert reasons == ["bad_type", "missing_field", "unknown_class"]
    assert service.terminate() == 0  # the final checkpoint holds every learned record

    probe = payments(200, seed=2)
    instances = [{k: v for k, v in r.items() if k != "is_fraud"} for r in probe]
    columns = {
        "amount": np.array([[r["amount"]] for r in probe], np.float32),
        "country": np.array([[r["country"]] for r in probe], object),
        "hour": np.array([[r["hour"]] for r in probe], np.float32),
    }
    version, expected = keras_outputs(tmp_path / "checkpoints", columns)
    truth = np.array([r["is_fraud"] == "fraud" for r in probe])
    assert ((expected[:, 0] >= 0.5) == truth).mean() >= 0.85  # it learned the rule

    for role in ("trainer", "predictor"):
        served = service_factory(**settings, role=role).start()
        status, body = served.request("POST", "/v1/models/susy:predict", {"instances": instances})
        assert status == 200, body
        assert body["model_version"] == version
        np.testing.assert_allclose(body["predictions"], expected[:, 0], rtol=1e-5, atol=1e-5)
        # Open Inference v2: one input per named feature, BYTES for the string.
        v2 = {
            "inputs": [
                {
                    "name": "amount",
                    "shape": [3, 1],
                    "datatype": "FP32",
                    "data": [i["amount"] for i in instances[:3]],
                },
                {
                    "name": "country",
                    "shape": [3, 1],
                    "datatype": "BYTES",
                    "data": [i["country"] for i in instances[:3]],
                },
                {
                    "name": "hour",
                    "shape": [3],
                    "datatype": "FP32",
                    "data": [i["hour"] for i in instances[:3]],
                },
            ]
        }
        status, body = served.request("POST", "/v2/models/susy/infer", v2)
        assert status == 200, body
        assert body["outputs"][0]["name"] == "probability"
        np.testing.assert_allclose(
            body["outputs"][0]["data"], expected[:3, 0], rtol=1e-5, atol=1e-5
        )
        # A wrong or missing name is a 4xx naming it.
        status, body = served.request(
            "POST", "/v1/models/susy:predict", {"instances": [{"amount": 1.0, "hour": 2.0}]}
        )
        assert status == 422 and "country" in json.dumps(body), body
        v2["inputs"][2]["name"] = "hours"
        status, body = served.request("POST", "/v2/models/susy/infer", v2)
        assert status == 422 and "hours" in json.dumps(body), body
        served.stop()


def test_multiclass_keras_file_on_iris_then_score(
    service_factory: Any, broker: Any, topic: str, tmp_path: Path
) -> None:
    from sklearn.datasets import load_iris

    data = load_iris()
    classes = [str(c) for c in data.target_names]
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(data.target)) for _ in range(8)])
    pairs = [
        (classes[data.target[i]].encode(), ",".join(repr(float(v)) for v in data.data[i]).encode())
        for i in order
    ]
    produce_pairs(broker.bootstrap, topic, pairs, partitions=1)
    path = save_iris_model(tmp_path / "iris.keras")
    settings = {
        "model": str(path),
        "task": "multiclass",
        "classes": ",".join(classes),
        "features": "sepal_length,sepal_width,petal_length,petal_width",
        "standardize": "on",
        "batch_size": 16,
    }
    service = service_factory(**settings).start()
    model = service.wait_trained(len(pairs))
    assert model["task"] == "multiclass" and model["classes"] == classes
    assert set(model["prequential"]) == {"accuracy", "loss"}
    status, body = service.request(
        "POST", "/v1/models/susy:predict", {"instances": data.data.tolist()}
    )
    assert status == 200, body
    probabilities = np.array(body["predictions"])
    assert probabilities.shape == (150, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (probabilities.argmax(axis=1) == data.target).mean()
    assert accuracy >= 0.9, accuracy
    named = [
        dict(zip(settings["features"].split(","), row, strict=True))
        for row in data.data.tolist()[:5]
    ]
    status, body = service.request("POST", "/v1/models/susy:predict", {"instances": named})
    assert status == 200 and np.allclose(body["predictions"], probabilities[:5], atol=1e-5)
    metrics = service.get_text("/metrics")
    assert "streamfit_prequential_accuracy" in metrics
    assert service.terminate() == 0

    # `streamfit score` of a test topic with the checkpoint's model: class names out.
    test_topic = f"{topic}-test"
    produce_pairs(broker.bootstrap, test_topic, pairs[:150], partitions=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFIT_")} | {
        "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "STREAMFIT_TASK": "multiclass",
        "STREAMFIT_CLASSES": settings["classes"],
        "STREAMFIT_LOG_FORMAT": "text",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "score",
            "--topic",
            test_topic,
            "--group",
            f"s-{topic}",
            "--quiet",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(multiclass): accuracy" in done.stdout, done.stdout
    scored = consume_all(broker.bootstrap, f"{test_topic}.predictions", 150)
    values = [json.loads(r.value) for r in scored]
    assert len({r.key for r in scored}) == 150
    assert all(v["class"] in classes and len(v["probabilities"]) == 3 for v in values)
    assert np.mean([v["class"] == v["label"] for v in values]) >= 0.9


def avro_schema(width: int) -> dict[str, Any]:
    fields = [{"name": f"x{i}", "type": "double"} for i in range(width)]
    return {
        "type": "record",
        "name": "Sample",
        "fields": [*fields, {"name": "y", "type": ["null", "double"], "default": None}],
    }


def test_regression_with_the_builtin_mlp_from_avro_records(
    service_factory: Any, broker: Any, topic: str, schema_registry: Any
) -> None:
    import fastavro
    from sklearn.datasets import make_friedman1

    from service.avro import encode

    width = 10
    x, y = make_friedman1(n_samples=6000, n_features=width, noise=0.5, random_state=0)
    train, test = slice(0, 5000), slice(5000, 6000)
    schema_id = schema_registry.register(f"{topic}-value", avro_schema(width))
    schema = fastavro.parse_schema(avro_schema(width))
    records = [
        {**{f"x{i}": float(v) for i, v in enumerate(row)}, "y": float(target)}
        for row, target in zip(x[train], y[train], strict=True)
    ]
    passes = [
        records[i] for i in np.random.default_rng(1).permutation(len(records) * 3) % len(records)
    ]
    pairs = [(None, encode(schema_id, schema, r)) for r in passes]
    pairs.insert(10, (None, encode(schema_id + 1000, schema, records[0])))  # unknown_schema
    pairs.insert(20, (None, encode(schema_id, schema, {**records[0], "y": None})))  # missing_field
    produce_pairs(broker.bootstrap, topic, pairs, partitions=2)
    service = service_factory(
        message_format="avro",
        schema_registry_url=schema_registry.url,
        task="regression",
        features=",".join(f"x{i}" for i in range(width)),
        label_field="y",
        learning_rate=0.003,
    ).start()
    model = service.wait_trained(len(passes), learn_s=240)
    assert model["task"] == "regression" and set(model["prequential"]) == {"mae", "rmse"}
    assert schema_registry.requests(f"/schemas/ids/{schema_id}") == 1  # cached
    dlq = consume_all(broker.bootstrap, f"{topic}.dlq", 2)
    assert sorted(dict(r.headers)["error"].decode().split(":")[0] for r in dlq) == [
        "missing_field",
        "unknown_schema",
    ]
    status, body = service.request(
        "POST", "/v1/models/susy:predict", {"instances": x[test].tolist()}
    )
    assert status == 200, body
    predicted = np.array(body["predictions"])
    rmse = float(np.sqrt(((predicted - y[test]) ** 2).mean()))
    baseline = float(np.sqrt(((y[train].mean() - y[test]) ** 2).mean()))
    assert rmse <= 0.7 * baseline, (rmse, baseline)
    metrics = service.get_text("/metrics")
    assert "streamfit_prequential_rmse" in metrics and "streamfit_schema_registry_up 1.0" in metrics
    v2 = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, width],
                "datatype": "FP32",
                "data": x[test][:2].ravel().tolist(),
            }
        ]
    }
    status, body = service.request("POST", "/v2/models/susy/infer", v2)
    assert status == 200 and body["outputs"][0]["name"] == "prediction", body
    np.testing.assert_allclose(body["outputs"][0]["data"], predicted[:2], rtol=1e-5, atol=1e-5)


def test_a_schema_registry_outage_pauses_learning_and_loses_nothing(
    service_factory: Any, broker: Any, topic: str, schema_registry: Any
) -> None:
    import fastavro

    from service.avro import encode

    width = 3
    schema_id = schema_registry.register(f"{topic}-value", avro_schema(width))
    schema = fastavro.parse_schema(avro_schema(width))
    rng = np.random.default_rng(3)
    rows = [
        {"x0": float(a), "x1": float(b), "x2": float(c), "y": float(a + b)}
        for a, b, c in rng.normal(size=(500, 3))
    ]
    schema_registry.fail_with(503)
    produce_pairs(broker.bootstrap, topic, [(None, encode(schema_id, schema, r)) for r in rows])
    service = service_factory(
        message_format="avro",
        schema_registry_url=schema_registry.url,
        task="regression",
        features="x0,x1,x2",
        label_field="y",
    ).start()

    def outage_shown() -> bool:
        status, body = service.request("GET", "/readyz")
        return status == 200 and "schema_registry_error" in json.dumps(body)

    wait_for(outage_shown, 60, what="the registry outage in /readyz")
    assert service.get("/model")["samples_trained"] == 0
    assert "streamfit_schema_registry_up 0.0" in service.get_text("/metrics")
    schema_registry.recover()
    service.wait_trained(500)
    assert not consume_all(broker.bootstrap, f"{topic}.dlq", 0, timeout_s=1)


def run_serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFIT_")}
    return subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env={**clean, "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / "ckpt"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_model_that_does_not_fit_stops_start_up_with_one_line(tmp_path: Path) -> None:
    done = run_serve({"STREAMFIT_MODEL": "tests.user_models:wrong_width"}, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "TASK=binary needs [n, 1]" in done.stderr

    done = run_serve(
        {"STREAMFIT_MODEL": "tests.user_models:payments", "STREAMFIT_MESSAGE_FORMAT": "csv"},
        tmp_path,
    )
    assert done.returncode == 2 and "string inputs" in done.stderr, done.stderr


def test_a_checkpoint_of_another_model_stops_start_up_naming_the_directory(tmp_path: Path) -> None:
    from service.checkpoints import Checkpoint
    from service.training.learner import builtin_learner

    learner = builtin_learner(18, "linear")
    CheckpointStore(tmp_path / "ckpt", 5).save(
        Checkpoint(version=1, state=learner.state(), offsets={})
    )
    done = run_serve({"STREAMFIT_MODEL": "mlp"}, tmp_path)
    assert done.returncode == 2
    assert "STREAMFIT_CHECKPOINT_DIR" in done.stderr and "MODEL linear, not mlp" in done.stderr, (
        done.stderr
    )
    done = run_serve({"STREAMFIT_MODEL": "linear", "STREAMFIT_TASK": "regression"}, tmp_path)
    assert done.returncode == 2 and "task" in done.stderr, done.stderr
