"""Auth: bearer keys, compared in constant time; one guard for predictions, one for admin.

`STREAMFIT_PREDICT_API_KEYS` (comma-separated) guards every `:predict` and `infer` route;
`STREAMFIT_API_KEY` guards the admin routes. Model metadata, `/model`, `/history`, `/lag`, the
dashboard, health and metrics stay open. A key is never logged nor echoed: the 401 says only
that a key was missing or wrong.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import AdminDisabled, Unauthorized


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None."""
    return bearer(request.headers.get("authorization", ""))


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization` header's value `Bearer <token>`, or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def matches(token: str | None, keys: tuple[str, ...]) -> bool:
    """Whether `token` is one of `keys`; every key is compared (no early exit), each in
    constant time, so timing tells nothing about which key nearly matched."""
    if token is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


class PredictKeys:
    """The prediction guard: a no-op without keys, else 401 unless a listed key is sent."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys

    async def __call__(self, request: Request) -> None:
        if self._keys and not matches(bearer_token(request), self._keys):
            raise Unauthorized("missing or wrong bearer token for predictions")


class AdminKey:
    """The admin guard: 403 when no admin key is configured, 401 unless it is sent."""

    def __init__(self, key: str | None) -> None:
        self._key = key

    async def __call__(self, request: Request) -> None:
        if not self._key:
            raise AdminDisabled("admin routes are disabled: STREAMFIT_API_KEY is not set")
        if not matches(bearer_token(request), (self._key,)):
            raise Unauthorized("missing or wrong bearer token")
