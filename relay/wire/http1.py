"""HTTP/1.1 message heads as bytes (pure): what the hot path writes to sockets.

Parsing is never done here (httptools, llhttp's C parser, does it); this module only
*writes* heads, and refuses header names and values that are not valid HTTP/1.1 (a
control character other than HTAB in a value, a name that is not a token, a target with
a space or control character): whatever an agent or a client sends, the bytes we write
stay one well-formed message that strict parsers read.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

__all__ = [
    "HeaderRefused",
    "check_fields",
    "chunk",
    "final_status_refused",
    "header_bytes",
    "request_head",
    "response_head",
    "status_line",
]

_TOKEN_INVALID: Final = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
# RFC 9110 5.5: what header lines may hold besides their own CRLF (visible characters,
# obs-text, SP, HTAB); deleting these bytes from a valid block of lines leaves its CRLFs.
_FIELD_BYTES: Final = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_TARGET_INVALID: Final = re.compile(r"[\x00-\x20\x7f]")
# Header names already found to be tokens: the usual few skip the pattern (a regex over
# every name was most of a head's cost). Bounded: a peer that invents names fills it
# once, and its new names are only checked.
_VALID_NAMES: Final[set[str]] = set()
_VALID_NAMES_MAX: Final = 1024
_VALID_NAME_LENGTH: Final = 64  # longer names are only checked: the set stays small

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


def _lines(headers: list[tuple[str, str]]) -> bytes:
    """``headers`` as header lines; :class:`HeaderRefused` if any would break the message.

    Names are checked as tokens (those seen before by a set lookup); then, with every
    allowed byte deleted, only the lines' own CRLFs may be left: no value carries CR, LF,
    nor any other control character but HTAB.
    """
    if not headers:
        return b""
    valid = _VALID_NAMES
    for name, _ in headers:
        if name not in valid:
            if not name or _TOKEN_INVALID.search(name) is not None:
                raise HeaderRefused("header name is not an HTTP token")
            if len(valid) < _VALID_NAMES_MAX and len(name) <= _VALID_NAME_LENGTH:
                valid.add(name)
    try:
        data = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HeaderRefused("header outside latin-1") from exc
    if data.translate(None, _FIELD_BYTES) != b"\r\n" * len(headers):
        raise HeaderRefused("header name or value carries a control character")
    return data


def check_fields(headers: list[tuple[str, str]]) -> None:
    """Raise :class:`HeaderRefused` unless ``headers`` can be written as HTTP/1.1 safely.

    For heads another writer (aiohttp's) writes, which refuses only CR and LF.
    """
    _lines(headers)


def response_head(status: int, headers: list[tuple[str, str]], extra: str = "") -> bytes:
    """A response head: status line, ``headers``, ``extra`` (pre-formatted lines), blank line.

    Raises :class:`HeaderRefused` for a header that would break the message.
    """
    return status_line(status) + _lines(headers) + f"{extra}\r\n".encode("latin-1")


def request_head(method: str, target: str, headers: list[tuple[str, str]], extra: str) -> bytes:
    """A request head: request line, ``headers``, ``extra`` lines, blank line.

    Raises :class:`HeaderRefused` for a header or target that would break the message.
    """
    lines = _lines(headers)
    if _TOKEN_INVALID.search(method) or not method or _TARGET_INVALID.search(target) or not target:
        raise HeaderRefused("request line is not valid HTTP/1.1")
    try:
        line = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HeaderRefused("request target outside latin-1") from exc
    return line + lines + f"{extra}\r\n".encode("latin-1")


def final_status_refused(status: int) -> str | None:
    """Why ``status`` cannot answer a request (None: it can), for the client's 502.

    An interim status (1xx) is no answer, and RFC 9110 section 15 leaves 600-999
    undefined: a client would have to take it for some 5xx.
    """
    if status < 200:
        return "the host's service sent no final status"
    if status > 599:
        return f"the host's service sent an undefined status ({status})"
    return None


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def header_bytes(headers: list[tuple[str, str]]) -> int:
    """Size of a header list as HTTP/1.1 would count it (name, value, separators)."""
    # A loop, not sum() over a generator: compiled, this is a plain C loop (it runs on
    # every head frame a tunnel reads).
    total = 0
    for name, value in headers:
        total += len(name) + len(value) + 4
    return total
