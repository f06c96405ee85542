"""Errors: every domain error and request error mapped to a status code, in one place.

Bodies are JSON: `{"error": "<what is wrong>", ...}`. A bad request is a 4xx with a reason,
never a 5xx.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service import errors

STATUS: dict[type[errors.StreamfitError], int] = {
    errors.InvalidInput: 422,
    errors.ModelNotFound: 404,
    errors.VersionNotFound: 404,
    errors.ModelNotReady: 503,
    errors.NotTraining: 409,
    errors.VersionUnusable: 409,
    errors.AdminDisabled: 403,
    errors.Unauthorized: 401,
    errors.UnsupportedMediaType: 415,
}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def status_of(exc: errors.StreamfitError) -> int:
    """The status code of a domain error (its class, or the nearest listed base class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.StreamfitError)
    status = status_of(exc)
    challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, str(exc), headers=challenge)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()[:20]
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return error_response(422, f"invalid request: {where}: {first['msg']}", detail=details)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), detail=exc.detail)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(errors.StreamfitError, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
