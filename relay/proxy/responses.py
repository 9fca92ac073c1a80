"""JSON error responses in the one shape the API promises."""

from __future__ import annotations

from typing import Final, Protocol

import msgspec
from aiohttp import web

from relay.error_shape import json_body, new_request_id
from relay.proxy.error_pages import html_body

__all__ = ["ERROR_DETAIL", "as_page", "error_answer", "json_error", "json_response"]


_encode = msgspec.json.Encoder().encode


#: Set on responses made by :func:`json_error`: (code, message, request id).
ERROR_DETAIL: Final = "relay_error"


def json_error(
    status: int, code: str, message: str, *, retry_after: int | None = None
) -> web.Response:
    """An error response with a request id; ``retry_after`` adds the back-off header."""
    request_id = new_request_id()
    response = web.Response(
        status=status,
        body=json_body(code, message, request_id),
        content_type="application/json",
        headers={"X-Request-Id": request_id},
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    response[ERROR_DETAIL] = (code, message, request_id)
    return response


class Answerable(Protocol):
    """An error of the relay's or the directory's tree: it says what a client should see."""

    http_status: int
    code: str


def error_answer(
    error: Answerable, message: str, *, retry_after: int | None = None
) -> web.Response:
    """The answer an error of the relay's tree stands for: its HTTP status and code.

    ``message`` is what the client reads; the error's own text (addresses, exception
    names) stays in the log.
    """
    return json_error(error.http_status, error.code, message, retry_after=retry_after)


def as_page(response: web.Response) -> web.Response:
    """The same error as a small HTML page (for a browser), same status and headers."""
    code, message, request_id = response[ERROR_DETAIL]
    page = web.Response(
        status=response.status,
        body=html_body(response.status, code, message, request_id),
        content_type="text/html",
        charset="utf-8",
    )
    for name in ("X-Request-Id", "Retry-After"):
        if name in response.headers:
            page.headers[name] = response.headers[name]
    return page


def json_response(payload: object, status: int = 200) -> web.Response:
    """A JSON response encoded with msgspec (structs, lists, dicts)."""
    return web.Response(status=status, body=_encode(payload), content_type="application/json")
