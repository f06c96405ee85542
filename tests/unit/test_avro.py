"""Avro records and the schema registry client, against the stand-in registry over TCP."""

from __future__ import annotations

import decimal
import logging
import struct
import threading
import urllib.parse
from typing import Any

import fastavro
import pytest

from service.avro import AvroDecoder, AvroReject, encode
from service.schema_registry import RegistryUnavailable, SchemaRegistry
from tests.schema_registry import StandInSchemaRegistry

PAYMENT = {
    "type": "record",
    "name": "Payment",
    "namespace": "test.streamfit",
    "fields": [
        {"name": "count", "type": "int"},
        {"name": "ts", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "amount", "type": "double"},
        {"name": "online", "type": "boolean"},
        {"name": "merchant", "type": "string"},
        {
            "name": "country",
            "type": {"type": "enum", "name": "Country", "symbols": ["FR", "DE", "US"]},
        },
        {"name": "discount", "type": ["null", "double"], "default": None},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "label", "type": "int"},
    ],
}
PAYMENT_RECORD = {
    "count": -3,
    "ts": 2**40 + 7,
    "ratio": 0.25,
    "amount": 12.5,
    "online": True,
    "merchant": "café",
    "country": "FR",
    "discount": 1.5,
    "note": None,
    "label": 1,
}


def decoder(registry: StandInSchemaRegistry, **client: Any) -> AvroDecoder:
    return AvroDecoder(SchemaRegistry(registry.url, **client))


def registered(registry: StandInSchemaRegistry, schema: Any) -> tuple[int, Any]:
    """(id, parsed schema) of `schema`, registered over HTTP the way a producer does."""
    return registry.register("payments-value", schema), fastavro.parse_schema(schema)


def test_round_trip_reads_every_scalar_type_by_name(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, schema = registered(schema_registry, PAYMENT)
    fields = decoder(schema_registry).decode(encode(schema_id, schema, PAYMENT_RECORD))
    expected = {k: v for k, v in PAYMENT_RECORD.items() if k != "note"}
    assert fields == expected
    assert [type(fields[k]) for k in ("count", "ts", "ratio", "online", "country")] == [
        int,
        int,
        float,
        bool,
        str,
    ]


def test_null_is_a_missing_field_and_a_set_union_is_its_value(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, schema = registered(schema_registry, PAYMENT)
    record = {**PAYMENT_RECORD, "discount": None, "note": "gift"}
    fields = decoder(schema_registry).decode(encode(schema_id, schema, record))
    assert "discount" not in fields
    assert fields["note"] == "gift"


def test_schema_registered_twice_has_one_id(schema_registry: StandInSchemaRegistry) -> None:
    first = schema_registry.register("a-value", PAYMENT)
    assert schema_registry.register("b-value", PAYMENT) == first


def test_non_scalar_fields_are_kept_as_fastavro_reads_them(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, schema = registered(
        schema_registry,
        {
            "type": "record",
            "name": "Wide",
            "fields": [
                {
                    "name": "inner",
                    "type": {
                        "type": "record",
                        "name": "In",
                        "fields": [{"name": "x", "type": "int"}],
                    },
                },
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "extra", "type": {"type": "map", "values": "long"}},
                {"name": "blob", "type": "bytes"},
                {"name": "hash", "type": {"type": "fixed", "name": "H", "size": 2}},
                {
                    "name": "price",
                    "type": {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
                },
            ],
        },
    )
    record = {
        "inner": {"x": 1},
        "tags": ["a", "b"],
        "extra": {"k": 2},
        "blob": b"\x00\x01",
        "hash": b"ab",
        "price": decimal.Decimal("12.34"),
    }
    assert decoder(schema_registry).decode(encode(schema_id, schema, record)) == record


def test_unknown_schema_id_is_a_reject(schema_registry: StandInSchemaRegistry) -> None:
    schema = fastavro.parse_schema(PAYMENT)
    with pytest.raises(AvroReject) as caught:
        decoder(schema_registry).decode(encode(42, schema, PAYMENT_RECORD))
    assert caught.value.reason == "unknown_schema"
    assert "42" in caught.value.detail


def test_unknown_id_is_remembered_for_a_while_then_asked_again(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema = fastavro.parse_schema(PAYMENT)
    value = encode(1, schema, PAYMENT_RECORD)
    remembering = decoder(schema_registry)
    for _ in range(100):
        with pytest.raises(AvroReject, match="unknown_schema"):
            remembering.decode(value)
    assert schema_registry.requests("/schemas/ids/1") == 1

    asking = decoder(schema_registry, unknown_ttl_s=0)
    with pytest.raises(AvroReject, match="unknown_schema"):
        asking.decode(value)
    assert registered(schema_registry, PAYMENT)[0] == 1  # now the producer registers it
    assert asking.decode(value)["label"] == 1


def _payment_value(schema_id: int) -> bytes:
    return encode(schema_id, fastavro.parse_schema(PAYMENT), PAYMENT_RECORD)


# (value given a registered PAYMENT id 1, id of the case)
ENCODING_REJECTS = [
    pytest.param(lambda v: b"", id="empty"),
    pytest.param(lambda v: v[:4], id="shorter-than-header"),
    pytest.param(lambda v: b"\x01" + v[1:], id="magic-1"),
    pytest.param(lambda v: b"{" + v[1:], id="magic-json"),
    pytest.param(lambda v: v[:-3], id="truncated"),
    pytest.param(lambda v: v[:5], id="header-only"),
    pytest.param(lambda v: v + b"\x00", id="trailing-byte"),
    pytest.param(lambda v: v[:5] + b"\xff" * 40, id="garbage"),
    pytest.param(lambda v: v.replace(b"caf\xc3\xa9", b"caf\xff\xfe"), id="string-not-utf8"),
    pytest.param(lambda v: v[:-2] + b"\x08" + v[-1:], id="union-index-out-of-range"),
]


@pytest.mark.parametrize("damage", ENCODING_REJECTS)
def test_values_not_in_wire_format_or_not_decodable_are_encoding_rejects(
    schema_registry: StandInSchemaRegistry, damage: Any
) -> None:
    assert registered(schema_registry, PAYMENT)[0] == 1
    value = damage(_payment_value(1))
    with pytest.raises(AvroReject) as caught:
        decoder(schema_registry).decode(value)
    assert caught.value.reason == "encoding", caught.value.detail


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param("string", id="string"),
        pytest.param({"type": "array", "items": "double"}, id="array"),
        pytest.param(["null", "long"], id="union"),
        pytest.param({"type": "enum", "name": "E", "symbols": ["A"]}, id="enum"),
    ],
)
def test_a_schema_that_is_not_a_record_is_bad_type(
    schema_registry: StandInSchemaRegistry, schema: Any
) -> None:
    schema_id = schema_registry.register("odd-value", schema)
    value = struct.pack(">bI", 0, schema_id) + b"\x00\x00"
    with pytest.raises(AvroReject) as caught:
        decoder(schema_registry).decode(value)
    assert caught.value.reason == "bad_type"
    assert "not an Avro record" in caught.value.detail


def test_a_schema_of_another_type_is_bad_type(schema_registry: StandInSchemaRegistry) -> None:
    schema_id = schema_registry.add('syntax = "proto3"; message M { int32 x = 1; }', "PROTOBUF")
    with pytest.raises(AvroReject) as caught:
        decoder(schema_registry).decode(struct.pack(">bI", 0, schema_id) + b"\x08\x01")
    assert caught.value.reason == "bad_type"
    assert "PROTOBUF" in caught.value.detail


def test_registry_errors_are_unavailable_not_rejects_and_are_not_cached(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, _ = registered(schema_registry, PAYMENT)
    value = _payment_value(schema_id)
    avro = decoder(schema_registry)
    schema_registry.fail_with(503)
    for _ in range(2):
        with pytest.raises(RegistryUnavailable, match="503"):
            avro.decode(value)
    schema_registry.fail_with(500)
    with pytest.raises(RegistryUnavailable, match="500"):
        avro.decode(value)
    schema_registry.recover()
    assert avro.decode(value)["amount"] == 12.5
    assert schema_registry.requests(f"/schemas/ids/{schema_id}") == 4


def test_registry_stopped_is_unavailable_then_recovers(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, _ = registered(schema_registry, PAYMENT)
    value = _payment_value(schema_id)
    avro = decoder(schema_registry)
    schema_registry.stop()
    with pytest.raises(RegistryUnavailable, match="refused"):
        avro.decode(value)
    schema_registry.start()
    assert avro.decode(value)["merchant"] == "café"


def test_registry_too_slow_is_unavailable(schema_registry: StandInSchemaRegistry) -> None:
    schema_id, _ = registered(schema_registry, PAYMENT)
    schema_registry.stall(2.0)
    with pytest.raises(RegistryUnavailable, match="timed out"):
        decoder(schema_registry, timeout_s=0.2).decode(_payment_value(schema_id))


def test_a_wrong_url_is_unavailable_not_an_unknown_schema(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, _ = registered(schema_registry, PAYMENT)
    wrong = AvroDecoder(SchemaRegistry(schema_registry.url + "/not-the-registry"))
    with pytest.raises(RegistryUnavailable, match="404"):
        wrong.decode(_payment_value(schema_id))


def test_one_request_per_schema_id(schema_registry: StandInSchemaRegistry) -> None:
    schema_id, _ = registered(schema_registry, PAYMENT)
    value = _payment_value(schema_id)
    avro = decoder(schema_registry)
    for _ in range(1000):
        avro.decode(value)
    assert schema_registry.requests(f"/schemas/ids/{schema_id}") == 1


def test_threads_missing_together_make_one_request(
    schema_registry: StandInSchemaRegistry,
) -> None:
    schema_id, _ = registered(schema_registry, PAYMENT)
    client = SchemaRegistry(schema_registry.url)
    schema_registry.stall(0.3)  # every thread arrives while the first request is out
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.schema(schema_id))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 8 and all(result is results[0] for result in results)
    assert schema_registry.requests(f"/schemas/ids/{schema_id}") == 1


PASSWORD = "p@ss:w/rd%"


def test_basic_auth_from_the_url_is_sent_and_the_password_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = StandInSchemaRegistry(auth=("alice", PASSWORD))
    registry.start()
    try:
        schema_id, _ = registered(registry, PAYMENT)
        userinfo = f"alice:{urllib.parse.quote(PASSWORD, safe='')}@"
        with_auth = registry.url.replace("://", f"://{userinfo}")
        client = SchemaRegistry(with_auth)
        caplog.set_level(logging.DEBUG)
        assert AvroDecoder(client).decode(_payment_value(schema_id))["label"] == 1
        assert client.url == registry.url
        assert "alice:***@" in repr(client)

        wrong = SchemaRegistry(with_auth.replace("alice", "mallory"))
        with pytest.raises(RegistryUnavailable, match="401") as caught:
            wrong.schema(schema_id)
        anonymous = SchemaRegistry(registry.url)
        with pytest.raises(RegistryUnavailable, match="401"):
            anonymous.schema(schema_id)
        registry.stop()
        with pytest.raises(RegistryUnavailable) as refused:
            SchemaRegistry(with_auth).schema(schema_id)
    finally:
        registry.stop()
    shown = [repr(client), repr(wrong), str(caught.value), str(refused.value), caplog.text]
    for text in shown:
        assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        SchemaRegistry("registry:8081")


def test_encode_refuses_an_id_out_of_range() -> None:
    with pytest.raises(ValueError, match="schema id"):
        encode(2**31, fastavro.parse_schema(PAYMENT), PAYMENT_RECORD)
