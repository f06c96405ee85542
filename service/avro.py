"""Avro records: Confluent wire format to a dict of field values, or a reject with a reason.

A value in the Confluent wire format is byte 0 = 0 (magic), bytes 1-4 = the writer schema's id
(big-endian), then the record in Avro binary encoding under that schema, which comes from the
schema registry (`service.schema_registry`, one request per id). `AvroDecoder.decode` returns
the record's fields by name, for the codec to turn into model inputs exactly as it does a flat
JSON object (docs/RECORDS.md, "Avro").

Avro types to values:
- int, long, float, double -> int or float; boolean -> bool; string, enum -> str (an enum is
  its symbol). These are the types a model feature or label can have.
- a union with null (`["null", T]`, the usual optional field) -> the value of T; a null leaves
  the field out of the dict, so a null is a missing field, not a value.
- record, array, map, bytes, fixed -> kept as fastavro reads them (dict, list, dict, bytes,
  bytes), so the codec can name the field in its reject: they cannot be features, and the
  codec rejects a feature of such a type as `bad_type`.
- logical types -> fastavro's defaults, e.g. decimal -> decimal.Decimal, timestamp-millis and
  timestamp-micros -> datetime (UTC), date -> datetime.date, time-* -> datetime.time, uuid ->
  uuid.UUID. Not features either.

Rejects (`AvroReject.reason` is the reason label of `streamfit_records_rejected_total`):
- `encoding`: not in the wire format (shorter than 5 bytes, magic byte not 0), or a body that
  does not decode under its writer schema (truncated, garbage, bytes left over at the end);
- `unknown_schema`: the registry has no schema with that id;
- `bad_type`: the writer schema is not an Avro record (a bare string, an array, a union...),
  or is not one this service can read (`schemaType` other than AVRO, schema references).
`RegistryUnavailable` is not a reject: the record may be fine, the registry is not; it goes
up to the caller, which retries rather than dead-letter a healthy stream.

>>> import fastavro
>>> schema = fastavro.parse_schema({"type": "record", "name": "Payment", "fields": [
...     {"name": "amount", "type": "double"},
...     {"name": "country", "type": ["null", "string"]}]})
>>> value = encode(7, schema, {"amount": 12.5, "country": None})
>>> value[:5].hex(), len(value)  # magic 0, schema id 7; then 8 bytes of double, 1 of null
('0000000007', 14)
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from service.schema_registry import SchemaRegistry, UnknownSchema, UnsupportedSchema

MAGIC_BYTE = 0
_HEADER = struct.Struct(">BI")  # magic byte, schema id
_MAX_SCHEMA_ID = 2**31 - 1  # the registry's ids are Java ints


class AvroReject(Exception):
    """A value that cannot be read as an Avro record: the reject reason and a readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AvroDecoder:
    """Reads Confluent wire-format values into dicts of field values (module doc)."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry

    def decode(self, value: bytes) -> dict[str, object]:
        """The record's fields by name, null fields left out.

        Raises `AvroReject` for a record that cannot be read, and lets
        `service.schema_registry.RegistryUnavailable` through.
        """
        if len(value) < _HEADER.size:
            raise AvroReject(
                "encoding", f"{len(value)} bytes, shorter than the 5-byte Avro wire-format header"
            )
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC_BYTE:
            raise AvroReject("encoding", f"magic byte {value[0]}, not 0: not Avro wire format")
        try:
            schema = self.registry.schema(schema_id)
        except UnknownSchema as error:
            raise AvroReject("unknown_schema", str(error)) from None
        except UnsupportedSchema as error:
            raise AvroReject("bad_type", str(error)) from None
        if not _is_record(schema):
            raise AvroReject(
                "bad_type", f"schema id {schema_id} is {_type_name(schema)}, not an Avro record"
            )
        body = io.BytesIO(value)
        body.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(body, schema)
        except Exception as error:  # malformed input surfaces as EOF, index, unicode... errors
            raise AvroReject(
                "encoding",
                f"body does not decode under schema id {schema_id}: {type(error).__name__}: "
                f"{error}",
            ) from None
        left = len(value) - body.tell()
        if left:
            raise AvroReject(
                "encoding", f"{left} bytes left after the record under schema id {schema_id}"
            )
        assert isinstance(record, dict)  # a record schema reads as a dict
        return {name: field for name, field in record.items() if field is not None}


def encode(schema_id: int, parsed_schema: Any, record: dict[str, Any]) -> bytes:
    """`record` in the Confluent wire format under `parsed_schema`, registered as `schema_id`.

    fastavro raises (ValueError, TypeError...) for a record that does not fit the schema.
    """
    if not 0 <= schema_id <= _MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} out of range 0..{_MAX_SCHEMA_ID}")
    out = io.BytesIO()
    out.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(out, parsed_schema, record)
    return out.getvalue()


def _is_record(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "record"


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return "a union"
    if isinstance(schema, dict):
        return f"a {schema.get('type')}"
    return f"a {schema}"
