"""Delayed labels: predictions served over HTTP, joined with labels arriving on a topic."""

from __future__ import annotations

import json

from service.synthetic import synthetic_susy
from tests.support import consume_all, produce_pairs, produce_synthetic


def test_labels_join_served_predictions_and_train(broker, topic, service_factory):
    labels_topic = f"{topic}.labels"
    produce_synthetic(broker.bootstrap, topic, rows=500, partitions=2)
    service = service_factory(labels_topic=labels_topic).start()
    service.wait_trained(500)

    x, y = synthetic_susy(3, seed=30)
    status, body = service.request(
        "POST",
        "/v1/models/susy:predict",
        {"instances": x.tolist()},
        headers={"x-request-id": "req-42"},
    )
    assert status == 200 and body["request_id"] == "req-42"
    status, single = service.request(
        "POST", "/v1/models/susy:predict", {"instances": [x[0].tolist()]}
    )
    generated = single["request_id"]
    assert generated

    produce_pairs(
        broker.bootstrap,
        labels_topic,
        [
            (b"req-42", json.dumps([int(v) for v in y]).encode()),
            (generated.encode(), b"1"),
            (b"never-served", b"1"),  # unknown request id
            (b"req-42", b"[1]"),  # already learned: unknown now
        ],
    )
    model = service.wait_trained(504)
    assert model["samples_trained"] == 504
    dead = consume_all(broker.bootstrap, f"{topic}.dlq", expected=2)
    reasons = sorted(dict(r.headers)["error"].split(b":")[0].decode() for r in dead)
    assert reasons == ["unknown_request", "unknown_request"]
    offsets = model["checkpoint"]["offsets"] if model["checkpoint"] else {}
    service.terminate()
    # The labels topic's offsets are part of the checkpoint (exactly-once for labels too).
    again = service_factory(labels_topic=labels_topic).start()
    restored = again.get("/model")
    assert restored["samples_trained"] == 504
    assert any(key.startswith(labels_topic) for key in restored["checkpoint"]["offsets"]), offsets
