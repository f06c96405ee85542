"""A TCP proxy in front of a Kafka broker that a test can cut and restore.

`FaultProxy` runs an asyncio server on its own event loop in a background thread, listening on
a free loopback port and forwarding every connection to an upstream address. `cut()` resets the
open connections and refuses new ones; `fail_requests()` resets a connection when it sends a
given kind of request (e.g. offset commits); `restore()` lets everything through again. A fault
can be scoped to Kafka clients by their `client.id`, which every Kafka request header carries:
the service's clients ("streamfit-...") lose the broker while the test's own producer keeps
writing through the same address.

Kafka clients connect to the address a broker advertises, not to the bootstrap address, so a
proxy only sits in the path if the broker advertises the proxy's port (`ProxiedBroker` below).

Used as `with FaultProxy(("127.0.0.1", 9092)) as proxy: proxy.cut(); ...; proxy.restore()`.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from service.broker import EmbeddedBroker, free_port

ClientFilter = Callable[[str | None], bool]

OFFSET_COMMIT = 8  # the Kafka API key of OffsetCommit requests


def everyone(client_id: str | None) -> bool:
    """The default scope of a fault: every connection."""
    return True


def client_id_prefix(prefix: str) -> ClientFilter:
    """A fault scope: Kafka clients whose client.id starts with `prefix`."""
    return lambda client_id: client_id is not None and client_id.startswith(prefix)


class _Connection:
    def __init__(self, client: asyncio.StreamWriter, client_id: str | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.client_id = client_id

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


async def _read_request_head(reader: asyncio.StreamReader) -> tuple[bytes, int, int, str | None]:
    """Read the head of a connection's first Kafka request.

    Returns the bytes read (forwarded unchanged), the request's total size (after the 4-byte
    length), its API key and the client.id of the request header (None if null).
    """
    head = await reader.readexactly(4 + 2 + 2 + 4 + 2)
    size, api_key, _version, _correlation, length = struct.unpack(">ihhih", head)
    if length < 0:
        return head, size, api_key, None
    name = await reader.readexactly(length)
    return head + name, size, api_key, name.decode("utf-8", errors="replace")


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream`; simulates outages between the two.

    - `cut(scope)`: open connections in scope are reset, new ones refused;
    - `fail_requests(api_keys, scope)`: a connection in scope is reset when it sends a request
      with one of these API keys (e.g. commits fail while fetches go on);
    - `restore()`: every connection and request goes through again.
    """

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.connections_refused = 0
        self.requests_failed = 0
        self._cut_scope: ClientFilter | None = None
        self._failing: tuple[frozenset[int], ClientFilter] | None = None
        self._open: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut(self, scope: ClientFilter = everyone) -> int:
        """Reset open connections in `scope` and refuse new ones; returns how many were cut."""
        return int(self._call(self._cut(scope)))

    def fail_requests(self, api_keys: set[int], scope: ClientFilter = everyone) -> None:
        """Reset any connection in `scope` that sends a request with one of `api_keys`."""
        self._call(self._set_failing((frozenset(api_keys), scope)))

    def restore(self) -> None:
        """Let every connection and request through again."""
        self._call(self._restore())

    def open_connections(self) -> list[str | None]:
        """Client ids of the connections open right now."""
        return list(self._call(self._list()))

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for connection in list(self._open):
            connection.abort()
        self._open.clear()
        await self._server.wait_closed()

    async def _cut(self, scope: ClientFilter) -> int:
        self._cut_scope = scope
        victims = [c for c in self._open if scope(c.client_id)]
        for connection in victims:
            connection.abort()
            self._open.discard(connection)
        return len(victims)

    async def _set_failing(self, failing: tuple[frozenset[int], ClientFilter]) -> None:
        self._failing = failing

    async def _restore(self) -> None:
        self._cut_scope = None
        self._failing = None

    async def _list(self) -> list[str | None]:
        return [c.client_id for c in self._open]

    def _refuses(self, client_id: str | None) -> bool:
        return self._cut_scope is not None and self._cut_scope(client_id)

    def _fails(self, api_key: int, client_id: str | None) -> bool:
        if self._failing is None:
            return False
        api_keys, scope = self._failing
        if api_key in api_keys and scope(client_id):
            self.requests_failed += 1
            return True
        return False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut_scope is everyone:
            self.connections_refused += 1
            writer.transport.abort()
            return
        try:
            head, size, api_key, client_id = await _read_request_head(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()
            return
        if self._refuses(client_id):
            self.connections_refused += 1
            writer.transport.abort()
            return
        if self._fails(api_key, client_id):
            writer.transport.abort()
            return
        connection = _Connection(writer, client_id)
        try:
            up_reader, connection.upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open.add(connection)
        connection.upstream.write(head)
        try:
            await asyncio.gather(
                self._pump_requests(reader, connection, size + 4 - len(head)),
                _pipe(up_reader, writer),
            )
        finally:
            self._open.discard(connection)
            connection.abort()

    async def _pump_requests(
        self, reader: asyncio.StreamReader, connection: _Connection, rest_of_first: int
    ) -> None:
        """Client to broker, one request frame at a time, so requests can be failed by key."""
        upstream = connection.upstream
        assert upstream is not None
        try:
            upstream.write(await reader.readexactly(rest_of_first))
            while True:
                length = await reader.readexactly(4)
                (size,) = struct.unpack(">i", length)
                payload = await reader.readexactly(size)
                (api_key,) = struct.unpack(">h", payload[:2])
                if self._fails(api_key, connection.client_id):
                    connection.abort()
                    return
                upstream.write(length + payload)
                await upstream.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            connection.abort()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


class ProxiedBroker(EmbeddedBroker):
    """A Tansu broker on its own port that advertises a `FaultProxy` in front of it.

    Clients may bootstrap from either address; metadata sends them all through the proxy, so
    the proxy's faults are theirs. `pause()`/`resume()` (SIGSTOP/SIGCONT) still freeze the
    broker itself.
    """

    def __init__(self) -> None:
        super().__init__(port=free_port())
        self.proxy = FaultProxy((self.host, self.port))

    @property
    def advertised(self) -> str:
        """The address clients are told to use: the proxy's."""
        return self.proxy.address

    def start(self, timeout_s: float = 20.0, quiet: bool = True) -> None:
        self.proxy.start()
        super().start(timeout_s, quiet)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self.resume()  # a frozen broker cannot act on SIGTERM
        super().stop(timeout_s)
        self.proxy.stop()
