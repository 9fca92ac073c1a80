"""HTTP/1.1 message heads as bytes (pure): what the hot path writes to sockets.

Parsing is never done here (httptools, llhttp's C parser, does it); this module only
*writes* heads, and refuses header names and values that could break the framing of
what it writes (CR, LF, NUL, a name that is not a token): whatever an agent or a
client sends, the bytes we write stay one well-formed message.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

__all__ = [
    "HeaderRefused",
    "chunk",
    "request_head",
    "response_head",
    "status_line",
]

_TOKEN_INVALID: Final = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_VALUE_INVALID: Final = re.compile(r"[\r\n\x00]")
# Header names joined by LF: tokens (a name's own LF is caught by the line count).
_NAMES: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")

_STATUS_LINES: Final = {
    int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}

#: Ends a chunked body.
LAST_CHUNK: Final = b"0\r\n\r\n"


class HeaderRefused(ValueError):
    """A header name or value that cannot be written as HTTP/1.1 safely."""


def status_line(status: int) -> bytes:
    """The status line of ``status`` (a made-up reason for unregistered codes)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Status {status}\r\n".encode("latin-1")
    return line


def _lines(headers: list[tuple[str, str]]) -> str:
    """``headers`` as header lines; :class:`HeaderRefused` if any would break the message.

    Names are checked as tokens in one pass over them all; then every CR and LF of the
    lines must be a line's own end, so no value carries one (nor a NUL).
    """
    if not headers:
        return ""
    if _NAMES.fullmatch("\n".join([name for name, _ in headers])) is None:
        raise HeaderRefused("header name is not an HTTP token")
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    n = len(headers)
    if text.count("\n") != n or text.count("\r") != n or "\x00" in text:
        raise HeaderRefused("header name or value carries CR, LF or NUL")
    return text


def response_head(status: int, headers: list[tuple[str, str]], extra: str = "") -> bytes:
    """A response head: status line, ``headers``, ``extra`` (pre-formatted lines), blank line.

    Raises :class:`HeaderRefused` for a header that would break the message.
    """
    text = _lines(headers) + extra + "\r\n"
    try:
        return status_line(status) + text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HeaderRefused("header outside latin-1") from exc


def request_head(method: str, target: str, headers: list[tuple[str, str]], extra: str) -> bytes:
    """A request head: request line, ``headers``, ``extra`` lines, blank line.

    Raises :class:`HeaderRefused` for a header or target that would break the message.
    """
    lines = _lines(headers)
    if (
        _TOKEN_INVALID.search(method)
        or not method
        or _VALUE_INVALID.search(target)
        or (" " in target or not target)
    ):
        raise HeaderRefused("request line is not valid HTTP/1.1")
    try:
        return f"{method} {target} HTTP/1.1\r\n{lines}{extra}\r\n".encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HeaderRefused("header outside latin-1") from exc


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)
