"""Middleware: request id, the request body limit (413) and HTTP metrics, as pure ASGI."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from service import metrics
from service.api.errors import error_response
from service.logs import request_id


class RequestContext:
    """Pure ASGI middleware: request id, body size limit (413), HTTP metrics.

    Requests on a route in `skip` are not counted here (an HTTP worker forwards them to the
    trainer's app, which counts them under their own route).
    """

    def __init__(
        self, app: Callable[..., Awaitable[None]], max_body: int, skip: Collection[str] = ()
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.skip = frozenset(skip)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or os.urandom(16).hex()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get(b"content-length")
            too_large = length is not None and length.isdigit() and int(length) > self.max_body
            if not too_large and length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_large = await self._read_limited(receive)
                receive = replay(body)
            if too_large:
                response = error_response(413, f"request body is larger than {self.max_body} bytes")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in self.skip:
                elapsed = time.perf_counter() - started
                metrics.HTTP_REQUESTS.labels(path, scope["method"], str(status)).inc()
                metrics.HTTP_DURATION.labels(path, scope["method"]).observe(elapsed)
            request_id.reset(token)

    async def _read_limited(self, receive: Any) -> tuple[bytes, bool]:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), False


def replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A `receive` that hands the app a body already read."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
