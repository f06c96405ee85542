"""Every task with every record format and every model form, covered pairwise (not as a
cross-product), through `streamfit fit` and `streamfit score` on the embedded broker.

With tests/integration/test_your_model.py (binary/named JSON/factory, multiclass/CSV/.keras,
regression/Avro/built-in) and the default flows (binary/CSV/built-in), each pair of
(task, format), (task, model) and (format, model) runs at least once on the real broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import ROOT, consume_all, produce_pairs
from tests.user_models import save_compiled

WIDTH = 4
CLASSES = ("low", "mid", "high")
TRAIN, TEST = 3000, 500

CASES = [
    ("binary", "avro", "keras"),
    ("binary", "json", "factory"),
    ("multiclass", "avro", "factory"),
    ("multiclass", "json", "builtin"),
    ("multiclass", "named", "keras"),
    ("regression", "csv", "factory"),
    ("regression", "named", "builtin"),
    ("regression", "json", "keras"),
]


def dataset(task: str, rows: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    """Features [rows, 4] and labels as a record carries them: 0/1, a class name, a value."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, WIDTH))
    if task == "binary":
        return x, [int(v) for v in (x[:, 0] + x[:, 1] > 0)]
    if task == "multiclass":
        return x, [CLASSES[i] for i in np.argmax(x[:, :3], axis=1)]
    return x, [float(v) for v in 2 * x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(rows)]


def records(fmt: str, x: np.ndarray, labels: list[Any], registry: Any, topic: str) -> list[Any]:
    names = [f"f{i}" for i in range(WIDTH)]
    if fmt == "csv":
        return [
            (str(y).encode(), ",".join(map(repr, row.tolist())).encode())
            for row, y in zip(x, labels, strict=True)
        ]
    if fmt == "json":
        return [
            (None, json.dumps({"features": row.tolist(), "label": y}).encode())
            for row, y in zip(x, labels, strict=True)
        ]
    objects = [
        {**dict(zip(names, row.tolist(), strict=True)), "target": y}
        for row, y in zip(x, labels, strict=True)
    ]
    if fmt == "named":
        return [(None, json.dumps(o).encode()) for o in objects]
    import fastavro

    from service.avro import encode

    kind = {int: "long", str: "string", float: "double"}[type(labels[0])]
    schema = {
        "type": "record",
        "name": "Row",
        "fields": [
            *({"name": n, "type": "double"} for n in names),
            {"name": "target", "type": kind},
        ],
    }
    schema_id = registry.register(f"{topic}-value", schema)
    parsed = fastavro.parse_schema(schema)
    return [(None, encode(schema_id, parsed, o)) for o in objects]


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFIT_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args, "--quiet"],
        env={**clean, "STREAMFIT_LOG_FORMAT": "text", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("task", "fmt", "form"), CASES, ids=["-".join(c) for c in CASES])
def test_fit_then_score(
    task: str, fmt: str, form: str, broker: Any, schema_registry: Any, tmp_path: Path
) -> None:
    topic = f"pairs-{uuid.uuid4().hex[:8]}"
    outputs = len(CLASSES) if task == "multiclass" else 1
    model = {
        "builtin": "mlp",
        "factory": "tests.user_models:columns",
        "keras": str(save_compiled(tmp_path / "m.keras", WIDTH, task, outputs)),
    }[form]
    env = {
        "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "STREAMFIT_GROUP_ID": f"g-{topic}",
        "STREAMFIT_MODEL": model,
        "STREAMFIT_TASK": task,
        "STREAMFIT_MESSAGE_FORMAT": "json" if fmt == "named" else fmt,
        "STREAMFIT_SCHEMA_REGISTRY_URL": schema_registry.url,
        "STREAMFIT_BATCH_SIZE": "32",
        "STREAMFIT_LEARNING_RATE": "0.01",
    }
    if task == "multiclass":
        env["STREAMFIT_CLASSES"] = ",".join(CLASSES)
    if fmt in ("named", "avro") or form == "factory":
        env["STREAMFIT_FEATURES"] = ",".join(f"f{i}" for i in range(WIDTH))
        env["STREAMFIT_LABEL_FIELD"] = "target"
    else:
        env["STREAMFIT_NUM_FEATURES"] = str(WIDTH)
    x, y = dataset(task, TRAIN, seed=1)
    produce_pairs(broker.bootstrap, topic, records(fmt, x, y, schema_registry, topic), partitions=2)
    fitted = cli(["fit", "--topic", topic, "--epochs", "3"], env)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    metric_names = ("mae", "rmse") if task == "regression" else ("accuracy", "log-loss")
    assert all(name in fitted.stdout for name in metric_names), fitted.stdout

    test_topic = f"{topic}-test"
    tx, ty = dataset(task, TEST, seed=2)
    produce_pairs(
        broker.bootstrap,
        test_topic,
        records(fmt, tx, ty, schema_registry, test_topic),
        partitions=2,
    )
    scored = cli(["score", "--topic", test_topic, "--group", f"s-{topic}"], env)
    assert scored.returncode == 0, scored.stderr[-3000:]
    out = consume_all(broker.bootstrap, f"{test_topic}.predictions", TEST)
    assert len({r.key for r in out}) == TEST  # every record scored once
    values = [json.loads(r.value) for r in out]
    if task == "binary":
        accuracy = np.mean([(v["probability"] >= 0.5) == v["label"] for v in values])
        assert accuracy >= 0.85, (accuracy, scored.stdout)
    elif task == "multiclass":
        assert all(len(v["probabilities"]) == 3 for v in values)
        accuracy = np.mean([v["class"] == v["label"] for v in values])
        assert accuracy >= 0.8, (accuracy, scored.stdout)
        assert "(multiclass): accuracy" in scored.stdout
    else:
        error = np.array([v["prediction"] - v["label"] for v in values])
        baseline = np.array([v["label"] for v in values]).std()
        assert np.sqrt((error**2).mean()) <= 0.7 * baseline, scored.stdout
        assert "r2" in scored.stdout
