"""JSON error responses in the one shape the API promises."""

from __future__ import annotations

import msgspec
from aiohttp import web

__all__ = ["ErrorBody", "json_error", "json_response"]


class ErrorDetail(msgspec.Struct, frozen=True):
    """The inner error object."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


_encode = msgspec.json.Encoder().encode


def json_error(
    status: int, code: str, message: str, *, retry_after: int | None = None
) -> web.Response:
    """An error response; ``retry_after`` adds the header clients back off by."""
    response = web.Response(
        status=status,
        body=_encode(ErrorBody(ErrorDetail(code, message))),
        content_type="application/json",
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def json_response(payload: object, status: int = 200) -> web.Response:
    """A JSON response encoded with msgspec (structs, lists, dicts)."""
    return web.Response(status=status, body=_encode(payload), content_type="application/json")
