"""`streamfit produce --from-csv` on the real broker: named JSON records from a CSV header."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, consume_all, service_environ


def test_produce_named_json_from_a_csv_with_a_header(broker, topic, tmp_path: Path) -> None:
    path = tmp_path / "fraud.csv"
    rows = [(12.5 + i, ("FR", "US", "DE")[i % 3], i % 24, i % 2) for i in range(30)]
    path.write_text(
        "amount,country,hour,is_fraud\n" + "".join(f"{a},{c},{h},{y}\n" for a, c, h, y in rows)
    )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "service", "produce", "--topic", topic),
            *("--from-csv", str(path), "--format", "json", "--named"),
            *("--label-column", "is_fraud", "--label-field", "fraud", "--partitions", "2"),
            *("--quiet", "--kafka-bootstrap", broker.bootstrap),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=service_environ(),
    )
    assert result.returncode == 0, result.stderr
    records = consume_all(broker.bootstrap, topic, expected=len(rows))
    assert len(records) == len(rows)
    read = sorted((json.loads(r.value) for r in records), key=lambda m: m["amount"])
    assert read == [{"amount": a, "country": c, "hour": h, "fraud": y} for a, c, h, y in rows], (
        "numbers as numbers, strings as strings, the label under LABEL_FIELD"
    )
    assert {r.partition for r in records} == {0, 1}
