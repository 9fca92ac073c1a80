"""Error answers the relay makes itself (pure): JSON for programs, a small page for people.

Every one carries a code, a short message and a request id (also sent as
``X-Request-Id`` and logged with the details), never an internal address or an
exception's text.
"""

from __future__ import annotations

import html
from typing import Final

from relay.error_shape import json_body, new_request_id
from relay.wire.http1 import status_line

__all__ = ["error_response", "html_body", "wants_html"]

_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:4em auto;color:#222}}
code{{background:#f3f3f3;padding:0 .3em}}small{{color:#777}}</style></head>
<body><h1>{status} {title}</h1><p>{message}</p>
<p><small>code <code>{code}</code> &middot; request id <code>{request_id}</code></small></p>
</body></html>
"""

_TITLES: Final = {
    400: "Bad request",
    404: "Not found",
    408: "Request timeout",
    413: "Too large",
    414: "Address too long",
    431: "Headers too large",
    502: "Bad gateway",
    503: "Unavailable",
    504: "Gateway timeout",
}


def wants_html(accept: str) -> bool:
    """Whether the client is a browser asking for a page (``Accept: text/html``).

    Not when it names ``application/json`` first: an API client saying
    ``application/json, text/html;q=0.5`` prefers the JSON error.
    """
    html = accept.find("text/html")
    if html < 0:
        return False
    json = accept.find("application/json")
    return json < 0 or html < json


def html_body(status: int, code: str, message: str, request_id: str) -> bytes:
    """A small self-contained page saying the same."""
    return _PAGE.format(
        status=status,
        title=_TITLES.get(status, "Error"),
        message=html.escape(message),
        code=html.escape(code),
        request_id=html.escape(request_id),
    ).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    retry_after: int | None = None,
    close: bool = False,
    head_only: bool = False,
    html: bool = False,
) -> tuple[bytes, str]:
    """A complete error response (JSON, or a page for browsers) and its request id."""
    request_id = new_request_id()
    if html:
        body, kind = html_body(status, code, message, request_id), "text/html; charset=utf-8"
    else:
        body, kind = json_body(code, message, request_id), "application/json"
    lines = [
        f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n",
        f"X-Request-Id: {request_id}\r\n",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    head = status_line(status) + "".join(lines).encode()
    return (head if head_only else head + body), request_id
