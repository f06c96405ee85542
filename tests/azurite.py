"""A real Azure Blob server for the tests: Azurite (Microsoft's emulator) on a free loopback port.

Azurite is a Node.js program; `npm ci --prefix .ci/node` installs the pinned version there
(.ci/run does it for CI). It runs as a child process with storage in memory and telemetry off,
and dies with the test process. The service's own Azure driver (adlfs) reaches it through the
`connection_string` option, as STREAMFIT_STORAGE_OPTIONS would pass it; the tests' own view of
a container goes through Azure's SDK client directly, not through adlfs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from service.broker import die_with_parent, free_port
from tests.support import ROOT
from tests.tools import find_tool

AZURITE_INSTALL = "npm ci --prefix .ci/node"
# Azurite's built-in development account: a published, well-known key, not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def azurite_binary() -> str | None:
    """The Blob service launcher: the one `npm ci --prefix .ci/node` installs, else PATH's."""
    local = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "azurite-blob"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return find_tool("azurite-blob")


class Azurite:
    """Azurite's Blob service on 127.0.0.1, in memory, owned by this object."""

    def __init__(self, binary: str, log_path: Path) -> None:
        self.binary = binary
        self.log_path = log_path
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    @property
    def options(self) -> dict[str, Any]:
        """adlfs options reaching it (what STREAMFIT_STORAGE_OPTIONS would hold)."""
        return {"connection_string": self.connection_string}

    @property
    def env(self) -> dict[str, str]:
        """A deployment's way to reach it: the options as JSON."""
        return {"STREAMFIT_STORAGE_OPTIONS": json.dumps(self.options)}

    def start(self, timeout_s: float = 30.0) -> Azurite:
        """Start it and wait until it accepts connections (about a second)."""
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--inMemoryPersistence",
                    "--disableTelemetry",  # no network here but loopback
                    # Azure's SDK sends its newest API version, often newer than Azurite's.
                    "--skipApiVersionCheck",
                    "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"azurite exited with code {self._process.returncode}: {self.logs()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"azurite did not listen on port {self.port} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def bucket(self, name: str) -> str:
        """Create container `name` (Azure's word for a bucket); its URL."""
        self.client().create_container(name)
        return f"az://{name}"

    def keys(self, container: str, prefix: str = "") -> list[str]:
        blobs = self.client().get_container_client(container).list_blobs(name_starts_with=prefix)
        return sorted(blob.name for blob in blobs)

    def put(self, container: str, key: str, data: bytes) -> None:
        """Write a blob (replacing any), as another client would."""
        blob = self.client().get_blob_client(container, key)
        blob.upload_blob(data, overwrite=True)
