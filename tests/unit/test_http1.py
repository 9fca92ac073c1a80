"""Message heads the hot path writes: well-formed, and never a second message smuggled in."""

from __future__ import annotations

import random

import httptools
import pytest

from relay.wire import http1
from relay.wire.http1 import (
    HeaderRefused,
    chunk,
    header_bytes,
    request_head,
    response_head,
    status_line,
)


class Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def test_response_head_parses_back_with_its_headers_and_framing():
    head = response_head(200, [("X-A", "1"), ("Set-Cookie", "a=b")], "Content-Length: 2\r\n")
    seen = Collect()
    parser = httptools.HttpResponseParser(seen)
    parser.feed_data(head + b"hi")
    assert parser.get_status_code() == 200
    assert seen.headers == [(b"X-A", b"1"), (b"Set-Cookie", b"a=b"), (b"Content-Length", b"2")]
    assert seen.body == b"hi"
    assert seen.complete == 1


def test_obs_text_values_survive_as_latin1():
    head = response_head(200, [("X-Cafe", "caf\xe9\xff")])
    assert b"X-Cafe: caf\xe9\xff\r\n" in head


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "1\r\nContent-Length: 0")],
        [("X-A", "1\nX-B: 2")],
        [("X-A", "nul\x00")],
        [("X A", "1")],
        [("X-A:", "1")],
        [("", "1")],
        [("X-\u0100", "1")],
        [("X-A", "1\rX-B: 2")],
        [("X-A", "1\r")],
        [("X-A", "1\r\n")],
        [("X:A", "1")],
        [("Transfer-Encoding: chunked", "x")],  # a name that reads as another header
        [("X-\x01", "1")],
        [("X\nY", "1")],
        [("X-A", "ok"), ("X-B", "2\r\nX-C: 3"), ("X-D", "ok")],
        # RFC 9110 5.5: no control character but HTAB in a value (strict parsers refuse
        # them, lenient ones may split a line on \x0b, \x0c or \x1c).
        [("X-A", "1\x0b2")],
        [("X-A", "1\x0c")],
        [("X-A", "\x1c")],
        [("X-A", "del\x7f")],
        [("X-A", "\x01")],
    ],
)
def test_headers_that_would_break_the_message_are_refused(headers):
    with pytest.raises(HeaderRefused):
        response_head(200, headers)
    with pytest.raises(HeaderRefused):
        request_head("GET", "/", headers, "")


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GE T", "/"),
        ("GET", "/a b"),
        ("GET", "/\r\nX: y"),
        ("", "/"),
        ("GET", ""),
        ("GET", "/a\tb"),
        ("GET", "/\x7f"),
        ("GET", "/\x00"),
    ],
)
def test_bad_request_lines_are_refused(method, target):
    with pytest.raises(HeaderRefused):
        request_head(method, target, [], "")


def test_tabs_inside_values_are_written_as_they_came():
    head = response_head(200, [("X-A", "a\tb c")])
    assert b"X-A: a\tb c\r\n" in head


def test_values_with_colons_and_spaces_are_written_as_they_came():
    headers = [("X-A", "a: b"), ("X-B", " spaced "), ("X-C", ""), ("Date", "Thu, 26 Nov 2026")]
    head = response_head(200, headers)
    assert head.endswith(b"X-A: a: b\r\nX-B:  spaced \r\nX-C: \r\nDate: Thu, 26 Nov 2026\r\n\r\n")


def test_request_head_is_one_request():
    data = request_head("POST", "/p?q=1", [("A", "b")], "Host: up\r\nContent-Length: 3\r\n")
    seen = Collect()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(data + b"abc")
    assert parser.get_method() == b"POST"
    assert seen.body == b"abc"
    assert seen.complete == 1


def test_unregistered_status_gets_a_reason():
    assert status_line(599) == b"HTTP/1.1 599 Status 599\r\n"
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"


def test_chunks_decode_to_the_same_bytes():
    seen = Collect()
    parser = httptools.HttpResponseParser(seen)
    body = chunk(b"hello ") + chunk(b"x" * 300) + b"0\r\n\r\n"
    parser.feed_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert seen.body == b"hello " + b"x" * 300
    assert seen.complete == 1


PIECES = [
    "a",
    "Z",
    "-",
    ":",
    " ",
    "\t",
    "\r",
    "\n",
    "\x00",
    "\x01",
    "é",
    "\u0100",
    "!",
    "(",
    "\r\n",
]
PIECES += ["X-Y: z", "Transfer-Encoding: chunked", "Content-Length: 0"]
# What other line-splitting rules take for a line end (str.splitlines, Unicode), a blank
# line, and a line that reads as the start of another message.
PIECES += ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\x7f", "\r\n\r\n", "HTTP/1.1 200 OK"]


@pytest.mark.parametrize("side", ["response", "request"])
def test_random_headers_are_refused_or_read_back_exactly_as_given(side: str):
    """Whatever a peer's headers hold, the head written is refused, or a strict parser
    (llhttp) reads back exactly those headers, and one message (never another header or
    message smuggled in).

    Responses carry an agent's headers to clients, requests the relay's to the upstream.
    """
    rng = random.Random(6455)
    written = 0
    for _ in range(20_000):
        headers = [
            (
                "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3))),
                "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4))),
            )
            for _ in range(rng.randint(0, 3))
        ]
        try:
            if side == "response":
                head = response_head(200, headers, "Content-Length: 0\r\n")
            else:
                head = request_head("GET", "/p", headers, "Content-Length: 0\r\n")
        except HeaderRefused:
            continue
        # One line per header, each free of CR, LF and NUL: whatever parser reads it (a
        # lone CR ends a line for some, while llhttp refuses it).
        lines = head.split(b"\r\n")
        assert len(lines) == len(headers) + 4, repr(headers)  # first line, length, blank
        assert not any(c in line for line in lines for c in (b"\r", b"\n", b"\x00"))
        seen = Collect()
        parser: httptools.HttpResponseParser | httptools.HttpRequestParser
        if side == "response":
            parser = httptools.HttpResponseParser(seen)
        else:
            parser = httptools.HttpRequestParser(seen)
        parser.feed_data(head)  # what we write, a strict parser reads
        written += 1
        got = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in seen.headers]
        assert got[:-1] == [(n, v.lstrip(" \t")) for n, v in headers], repr(headers)
        assert seen.complete == 1
    assert written > 1_000  # the generator also makes headers worth writing


def test_header_bytes_counts_what_the_lines_take_on_the_wire():
    headers = [("content-type", "text/plain"), ("x-empty", ""), ("Set-Cookie", "a=b; Path=/")]
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    assert header_bytes(headers) == len(lines)
    assert header_bytes([]) == 0


def test_long_names_are_checked_but_never_remembered():
    name = "X-" + "a" * 200
    response_head(200, [(name, "1")])
    assert name not in http1._VALID_NAMES


def test_names_already_checked_are_remembered_within_a_bound():
    # A peer inventing names fills the set of names known good once; after that, its new
    # names are still checked (and refused when they are not tokens), never stored.
    for i in range(3000):
        response_head(200, [(f"X-Invented-{i}", "1")])
    assert len(http1._VALID_NAMES) == http1._VALID_NAMES_MAX
    with pytest.raises(HeaderRefused):
        response_head(200, [("X-Invented-9999 ", "1")])
    with pytest.raises(HeaderRefused):
        response_head(200, [("X-Invented-9999\r\nX-B", "1")])
    assert "X-Invented-2999" not in http1._VALID_NAMES


def test_only_statuses_200_to_599_are_final_answers() -> None:
    assert http1.final_status_refused(100) == "the host's service sent no final status"
    assert http1.final_status_refused(199) is not None
    for status in (200, 204, 404, 599):
        assert http1.final_status_refused(status) is None
    assert "undefined status (600)" in (http1.final_status_refused(600) or "")
    assert "undefined status (999)" in (http1.final_status_refused(999) or "")
