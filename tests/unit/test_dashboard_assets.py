"""The dashboard's files as shipped: complete, self-contained, and fit for its CSP."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from relay.api.ui import ASSETS, SECURITY_HEADERS, load_assets


class _Refs(HTMLParser):
    """What index.html loads, and whether it has inline code the CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.refs.append(values[name])
        if tag == "script" and not values.get("src"):
            self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [
            f"{tag} {name}=" for name in values if name == "style" or name.startswith("on")
        ]


def test_every_file_loads_and_the_page_refers_only_to_them():
    assets = load_assets()
    assert set(assets) == set(ASSETS)
    assert all(asset.body for asset in assets.values())
    parser = _Refs()
    parser.feed(assets["index.html"].body.decode())
    assert parser.inline == []
    assert parser.refs
    assert {ref.removeprefix("/ui/") for ref in parser.refs} <= set(ASSETS)


def test_the_script_writes_text_only_and_calls_only_this_origin():
    script = load_assets()["dashboard.js"].body.decode()
    # Data from the API reaches the page through textContent alone.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)
    assert re.findall(r"https?://[^\s`\"']*", script) == ["http://127.0.0.1:PORT"]  # a hint
    assert "fetch(path" in script
    # The admin API's routes (DESIGN.md) and nothing else.
    assert set(re.findall(r'[`"](/api/[^`"?$]*)', script)) == {
        "/api/hosts",
        "/api/hosts/",
        "/api/machines",
        "/api/events",
        "/api/dns/records",
        "/api/dns/sync",
    }


def test_the_policy_allows_nothing_from_elsewhere():
    csp = dict(
        part.strip().split(" ", 1)
        for part in SECURITY_HEADERS["Content-Security-Policy"].split(";")
    )
    assert csp["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert csp[directive] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
