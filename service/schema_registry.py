"""Schema registry client: writer schemas by id from a Confluent Schema Registry, cached.

`SchemaRegistry(url).schema(schema_id)` is `fastavro.parse_schema` of the `schema` string
that `GET {url}/schemas/ids/{schema_id}` returns. A registry never changes the schema behind
an id, so each parsed schema is kept for the life of the client: one request per id, however
many records carry it. The cache is safe to use from several threads (the codec runs on its
own decode thread).

What can go wrong is split by whose fault it is:
- `UnknownSchema`: the registry answers 404 with its error code 40403: no schema has that id.
  The record names a schema that does not exist; that record is a reject. The answer is
  remembered for `unknown_ttl_s` so a burst of such records costs one request, not one each.
- `UnsupportedSchema`: the id exists but its schema cannot be read here (`schemaType` other
  than AVRO, schema references, a schema fastavro does not parse). Also a per-record reject,
  and cached like a schema.
- `RegistryUnavailable`: anything else (connection refused, timeout, HTTP 5xx, 401/403, a
  404 without the registry's error code, which is a wrong URL rather than a missing schema,
  a body that is not the registry's JSON). Transient or a configuration fault: never a reason
  to reject a record; nothing of it is cached, so the next call asks again.

Credentials may be embedded in the URL (`http://user:pass@host:8081`), as Confluent's clients
accept them: they are sent as HTTP basic auth and never appear in `url`, `repr` or errors.

Only the standard library is used (urllib): httpx is not a runtime dependency.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from typing import Any

import fastavro

log = logging.getLogger(__name__)

_ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"
_SCHEMA_NOT_FOUND = 40403  # the registry's error_code for an unknown schema id
_DETAIL_CHARS = 200  # how much of an unexpected body an error quotes
_MAX_REMEMBERED_UNKNOWN = 4096


class SchemaRegistryError(Exception):
    """Base of the schema registry client's errors."""


class UnknownSchema(SchemaRegistryError):
    """The registry has no schema with this id (HTTP 404, error code 40403)."""

    def __init__(self, schema_id: int, detail: str) -> None:
        super().__init__(f"schema id {schema_id} not found: {detail}")
        self.schema_id = schema_id
        self.detail = detail


class UnsupportedSchema(SchemaRegistryError):
    """The registry has this id, but not as an Avro schema this client can parse."""

    def __init__(self, schema_id: int, detail: str) -> None:
        super().__init__(f"schema id {schema_id} unsupported: {detail}")
        self.schema_id = schema_id
        self.detail = detail


class RegistryUnavailable(SchemaRegistryError):
    """The registry could not answer (unreachable, timeout, 5xx, unexpected answer)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SchemaRegistry:
    """Parsed Avro schemas by id from a Confluent Schema Registry at `url`, cached per id.

    >>> registry = SchemaRegistry("http://alice:s3cret@registry:8081/")
    >>> registry.url
    'http://registry:8081'
    >>> registry
    SchemaRegistry(url='http://alice:***@registry:8081')
    """

    def __init__(self, url: str, timeout_s: float = 5.0, unknown_ttl_s: float = 30.0) -> None:
        self.url, self._auth_header, self._username = _split_credentials(url)
        self.timeout_s = timeout_s
        self.unknown_ttl_s = unknown_ttl_s
        self._schemas: dict[int, Any] = {}
        self._unsupported: dict[int, UnsupportedSchema] = {}
        self._unknown_until: dict[int, tuple[float, UnknownSchema]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        if self._username is None:
            return f"SchemaRegistry(url={self.url!r})"
        scheme, rest = self.url.split("://", 1)
        return f"SchemaRegistry(url={f'{scheme}://{self._username}:***@{rest}'!r})"

    def schema(self, schema_id: int) -> Any:
        """The parsed writer schema for `schema_id` (fastavro.parse_schema of its JSON).

        Raises `UnknownSchema`, `UnsupportedSchema` or `RegistryUnavailable` (module doc).
        """
        # Lock-free fast path: a dict read is atomic, and an id's entry is set once.
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:  # one request per id, even when threads miss together
            cached = self._schemas.get(schema_id)
            if cached is not None:
                return cached
            # Fresh exceptions: re-raising a stored one would grow its traceback each time.
            if schema_id in self._unsupported:
                raise UnsupportedSchema(schema_id, self._unsupported[schema_id].detail)
            remembered = self._unknown_until.get(schema_id)
            if remembered is not None and time.monotonic() < remembered[0]:
                raise UnknownSchema(schema_id, remembered[1].detail)
            try:
                parsed = self._fetch(schema_id)
            except UnknownSchema as unknown:
                self._remember_unknown(unknown)
                raise
            except UnsupportedSchema as unsupported:
                self._unsupported[schema_id] = unsupported
                raise
            self._unknown_until.pop(schema_id, None)
            self._schemas[schema_id] = parsed
        log.info("schema fetched", extra={"schema_id": schema_id, "registry": self.url})
        return parsed

    def _remember_unknown(self, unknown: UnknownSchema) -> None:
        now = time.monotonic()
        if len(self._unknown_until) >= _MAX_REMEMBERED_UNKNOWN:  # garbage ids: keep it bounded
            self._unknown_until = {
                schema_id: entry
                for schema_id, entry in self._unknown_until.items()
                if entry[0] > now
            }
            if len(self._unknown_until) >= _MAX_REMEMBERED_UNKNOWN:
                self._unknown_until.clear()
        self._unknown_until[unknown.schema_id] = (now + self.unknown_ttl_s, unknown)

    def _fetch(self, schema_id: int) -> Any:
        status, body = self._get(f"/schemas/ids/{int(schema_id)}")
        if status == 404 and _error_code(body) == _SCHEMA_NOT_FOUND:
            raise UnknownSchema(schema_id, _message(body))
        if status != 200:
            raise RegistryUnavailable(
                f"GET {self.url}/schemas/ids/{schema_id}: HTTP {status} {_excerpt(body)}"
            )
        try:
            answer = json.loads(body)
            text = answer["schema"]
            if not isinstance(text, str):
                raise TypeError("schema is not a string")
        except (ValueError, TypeError, KeyError) as error:
            raise RegistryUnavailable(
                f"GET {self.url}/schemas/ids/{schema_id}: not a registry answer ({error}): "
                f"{_excerpt(body)}"
            ) from None
        schema_type = answer.get("schemaType") or "AVRO"
        if schema_type != "AVRO":
            raise UnsupportedSchema(schema_id, f"schemaType {schema_type}, not AVRO")
        if answer.get("references"):
            raise UnsupportedSchema(schema_id, "schema references are not supported")
        try:
            return fastavro.parse_schema(json.loads(text))
        except Exception as error:  # fastavro raises several types for a schema it rejects
            raise UnsupportedSchema(schema_id, f"not a readable Avro schema: {error}") from None

    def _get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of a GET on the registry; RegistryUnavailable if there is none."""
        request = urllib.request.Request(self.url + path, headers={"Accept": _ACCEPT})
        if self._auth_header is not None:
            request.add_unredirected_header("Authorization", self._auth_header)
        try:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:  # a status other than 2xx: still an answer
                with error:
                    return error.code, error.read()
        except (urllib.error.URLError, HTTPException, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise RegistryUnavailable(f"GET {self.url}{path}: {reason}") from None


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user info or trailing slash, basic auth header or None, user name)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"schema registry URL must be http(s)://host[:port]: {parts.scheme}://…")
    host = parts.netloc.rpartition("@")[2]
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    if parts.username is None:
        return clean, None, None
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return clean, f"Basic {token}", user


def _error_code(body: bytes) -> object:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("error_code") if isinstance(answer, dict) else None


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        return _excerpt(body)


def _excerpt(body: bytes) -> str:
    return body[:_DETAIL_CHARS].decode("utf-8", "replace")
