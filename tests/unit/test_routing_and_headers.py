"""Host routing and header rules at the proxy boundary."""

from __future__ import annotations

import pytest

from relay.proxy.headers import request_headers_for_upstream, response_headers_for_client
from relay.proxy.routing import slug_from_host


@pytest.mark.parametrize(
    ("host", "slug"),
    [
        ("abc12345.localhost", "abc12345"),
        ("abc12345.localhost:8080", "abc12345"),
        ("ABC12345.LocalHost.", "abc12345"),
        ("localhost:8080", None),
        ("127.0.0.1:8080", None),
        ("a.b.localhost", None),
        ("[::1]:8080", None),
        (".localhost", None),
        ("", None),
        (None, None),
        ("abc.example.com", None),
    ],
)
def test_only_one_label_under_the_base_domain_names_a_host(host, slug):
    assert slug_from_host(host, "localhost") == slug


def test_client_forwarding_and_internal_headers_never_reach_the_upstream():
    out = request_headers_for_upstream(
        [
            ("Host", "x.localhost"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Port", "6666"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Relay-Hop", "1"),
            ("Connection", "close, X-Secret"),
            ("X-Secret", "s"),
            ("Transfer-Encoding", "chunked"),
            ("Accept", "text/html"),
            ("Accept", "application/json"),
        ],
        client_ip="10.0.0.9",
        proto="https",
        host="x.localhost",
    )
    names = [n.lower() for n, _ in out]
    assert ("Accept", "text/html") in out
    assert ("Accept", "application/json") in out
    assert out[-3:] == [
        ("X-Forwarded-For", "10.0.0.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "x.localhost"),
    ]
    for gone in ("host", "forwarded", "x-relay-hop", "connection", "x-secret", "transfer-encoding"):
        assert gone not in names
    assert names.count("x-forwarded-for") == 1
    assert "x-forwarded-port" not in names


def test_response_hop_by_hop_headers_are_dropped_but_set_cookie_repeats():
    out = response_headers_for_client(
        [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Keep-Alive", "x"), ("Content-Length", "5")]
    )
    assert out == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "5")]
