"""A stand-in Confluent Schema Registry: a real HTTP server on a free loopback port.

No Schema Registry server installs here (it is a Java service), so tests talk to this one over
TCP, the way the service talks to the real one. It implements the endpoints the service and
the tests use, with Confluent's paths, bodies, error codes and content type:
- `GET /schemas/ids/{id}` -> 200 `{"schema": "<schema JSON as a string>"}` (plus `schemaType`
  when it is not AVRO), or 404 `{"error_code": 40403, "message": "Schema not found"}`;
- `POST /subjects/{subject}/versions` with `{"schema": "...", "schemaType"?: "..."}` ->
  `{"id": N}`; the same schema (and type) gets the same id, under any subject, as a producer
  registering it would see.
Knobs for fault tests: `fail_with(status)` makes every request answer that status until
`recover()`; `stall(seconds)` delays every answer; `stop()` and `start()` again (same port)
for a registry that goes away and comes back; `requests(path)` counts requests per path;
`auth=(user, password)` makes it demand HTTP basic auth (401, error code 40101, otherwise).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_SCHEMA_BY_ID = re.compile(r"^/schemas/ids/(\d+)$")
_REGISTER = re.compile(r"^/subjects/([^/]+)/versions$")


class StandInSchemaRegistry:
    """Schemas by id, registration by subject, and fault knobs (module doc)."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self.port = 0  # a free port on the first start, the same one after
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._schemas: dict[int, tuple[str, str]] = {}  # id -> (schemaType, schema JSON)
        self._ids: dict[tuple[str, str], int] = {}
        self._subjects: dict[str, list[int]] = {}
        self._requests: Counter[str] = Counter()
        self._failure: int | None = None
        self._stall_s = 0.0
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve on 127.0.0.1 (a free port the first time, the same port on a restart)."""
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stand-in-schema-registry",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering: connections are refused until `start()`. Schemas are kept."""
        self._stopping.set()  # cut stalls short
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def register(self, subject: str, schema: Any) -> int:
        """Register `schema` (a JSON value) under `subject` over HTTP like a producer; its id."""
        text = json.dumps(schema)
        request = urllib.request.Request(
            f"{self.url}/subjects/{subject}/versions",
            data=json.dumps({"schema": text}).encode(),
            headers={"Content-Type": CONTENT_TYPE},
            method="POST",
        )
        if self.auth is not None:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.loads(response.read())["id"])

    def add(self, schema: str, schema_type: str = "AVRO") -> int:
        """Store a schema without HTTP (any type, even one Confluent would refuse); its id."""
        with self._lock:
            key = (schema_type, schema)
            if key not in self._ids:
                self._ids[key] = len(self._schemas) + 1
                self._schemas[self._ids[key]] = key
            return self._ids[key]

    def fail_with(self, status: int) -> None:
        """Answer every request with `status` (and a registry error body) until `recover()`."""
        self._failure = status

    def stall(self, seconds: float) -> None:
        """Wait `seconds` before each answer (0 to stop stalling)."""
        self._stall_s = seconds

    def recover(self) -> None:
        """Answer normally again."""
        self._failure = None
        self._stall_s = 0.0

    def requests(self, path: str) -> int:
        """How many requests arrived for `path` (e.g. "/schemas/ids/1"), failed ones included."""
        with self._lock:
            return self._requests[path]

    def _answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self._requests[path] += 1
        if self._stall_s:
            self._stopping.wait(self._stall_s)
        if self._failure is not None:
            return self._failure, _error(self._failure * 100, "stand-in failure")
        if self.auth is not None and not _authorized(headers, self.auth):
            return 401, _error(40101, "Unauthorized")
        by_id = _SCHEMA_BY_ID.match(path)
        if method == "GET" and by_id:
            with self._lock:
                found = self._schemas.get(int(by_id.group(1)))
            if found is None:
                return 404, _error(40403, "Schema not found")
            schema_type, schema = found
            answer = {"schema": schema}
            if schema_type != "AVRO":  # Confluent leaves schemaType out for Avro
                answer["schemaType"] = schema_type
            return 200, answer
        register = _REGISTER.match(path)
        if method == "POST" and register:
            try:
                request = json.loads(body)
                schema_id = self.add(request["schema"], request.get("schemaType", "AVRO"))
            except (ValueError, KeyError, TypeError):
                return 422, _error(42201, "Invalid schema")
            with self._lock:
                self._subjects.setdefault(register.group(1), []).append(schema_id)
            return 200, {"id": schema_id}
        return 404, _error(404, "HTTP 404 Not Found")


def _handler_for(registry: StandInSchemaRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            self._reply("POST")

        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            status, answer = registry._answer(method, path, self.headers, body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest output is for the tests

    return Handler


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error_code": code, "message": message}


def _authorized(headers: Any, auth: tuple[str, str]) -> bool:
    expected = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    return bool(headers.get("Authorization") == expected)
