"""A real GCS-protocol server for the tests: gcp-storage-emulator on a free loopback port.

It serves Google Cloud Storage's JSON and upload APIs over HTTP, in memory, in this process,
so the service's own GCS driver (gcsfs) talks to it unchanged: the `endpoint_url` option (or
the standard STORAGE_EMULATOR_HOST variable) names it, and `token="anon"` skips Google's
credential chain. The tests' own view of the bucket goes over plain HTTP, not through gcsfs.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from typing import Any

from service.broker import free_port

# gcsfs's default filesystem class first asks the Storage Control gRPC API for a bucket's
# layout (zonal, hierarchical) before each operation, and retries for 60 s when that fails;
# an HTTP-only emulator has no gRPC API. This documented switch selects gcsfs's plain JSON-API
# class. It is read when gcsfs is first imported, so it is set on importing this module
# (conftest imports it before any test runs).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

GCS_INSTALL = "pip install -e '.[test]' brings gcsfs and gcp-storage-emulator"


class GcsEmulator:
    """gcp-storage-emulator's server on 127.0.0.1, storage in memory."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, Any]:
        """gcsfs options reaching it (what STREAMFIT_STORAGE_OPTIONS would hold)."""
        return {"endpoint_url": self.endpoint, "token": "anon"}

    @property
    def env(self) -> dict[str, str]:
        """A deployment's way to reach it: the standard emulator variable, anonymous access."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "STREAMFIT_STORAGE_OPTIONS": json.dumps({"token": "anon"}),
        }

    def start(self) -> GcsEmulator:
        from gcp_storage_emulator.server import create_server

        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def bucket(self, name: str) -> str:
        """Create bucket `name`; its URL."""
        self._call("POST", "/storage/v1/b?project=streamfit-test", json.dumps({"name": name}))
        return f"gs://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix})
        answer = self._call("GET", f"/storage/v1/b/{bucket}/o?{query}")
        return sorted(item["name"] for item in answer.get("items", []))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write an object (replacing any), as another client would."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data)

    def _call(self, method: str, path: str, body: str | bytes | None = None) -> Any:
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method)
        if body is not None:
            kind = "application/json" if isinstance(body, str) else "application/octet-stream"
            request.add_header("Content-Type", kind)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
