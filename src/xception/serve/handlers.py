"""Refusals: every request the service turns down is answered ``{"error": kind, "message": ...}`` with its
status code, and counted by kind.

Three sources, one form: :class:`RequestError` raised by the service (a bad upload, a timeout, ...),
FastAPI's validation of typed parameters (a ``top_k`` out of range: ``bad_request``, 400, as before the
parameters were typed), and Starlette's HTTP errors (an unknown path, a wrong method).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .metrics import Metrics

# Starlette's own refusals, by status: the kind they are counted and answered as.
_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed"}


class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"error": kind, "message": message}``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def refusal(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status, headers=headers)


def describe_validation(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors in one line: ``top_k: input should be greater than or equal to 1 (got '0')``."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "header", "body")]
        text = str(error.get("msg", "is not valid"))
        text = text[:1].lower() + text[1:]
        given = f" (got {error['input']!r})" if "input" in error and error["input"] is not None else ""
        parts.append(f"{'.'.join(loc) or 'request'}: {text}{given}")
    return "; ".join(parts) or "the request is not valid"


def install(app: FastAPI, metrics: Metrics) -> None:
    """Answer and count refusals of every source in the one JSON form."""

    async def refuse(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestError)
        metrics.error(err.kind)
        return refusal(err.status, err.kind, err.message)

    async def invalid(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        metrics.error("bad_request")
        return refusal(400, "bad_request", describe_validation(err.errors()))

    async def http_error(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, HTTPException)
        kind = _HTTP_KINDS.get(err.status_code, "http_error")
        metrics.error(kind)
        return refusal(err.status_code, kind, f"{err.detail}: see /docs for the endpoints and their methods",
                       headers=dict(err.headers or {}))

    app.add_exception_handler(RequestError, refuse)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
