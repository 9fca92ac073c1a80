"""The operator dashboard at ``/ui``: a few static files that read only the admin API.

No build step and no external assets: ``index.html``, ``dashboard.js``,
``dashboard.css`` and an icon ship beside this module as package data and are read once,
when the app is built. The page itself holds no secret, so it is served without the admin token;
the page asks for the token and sends it to ``/api/...`` like any other client.

Every answer carries a strict Content-Security-Policy (scripts, styles and fetches from
this origin only, no inline code, no framing, no form posts), ``nosniff`` and
``Cache-Control: no-cache`` with an ETag: a browser revalidates, so a relay upgrade shows
at the next load, and an unchanged file costs a 304.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Final

import msgspec
from aiohttp import web

from relay.proxy.responses import json_error

__all__ = ["ASSETS", "SECURITY_HEADERS", "add_ui_routes", "load_assets"]

#: The dashboard's files and their media types; nothing else is served under /ui.
ASSETS: Final = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Asset(msgspec.Struct, frozen=True):
    """One file of the dashboard, read once."""

    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Read the dashboard's files from the installed package."""
    folder = resources.files(__name__)
    assets: dict[str, Asset] = {}
    for name, content_type in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = Asset(body, content_type, etag)
    return assets


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    # Every file is UTF-8 text (the icon is SVG).
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


def add_ui_routes(app: web.Application) -> None:
    """Register ``/ui`` (the page) and ``/ui/{file}`` (its script and style)."""
    assets = load_assets()
    index = assets["index.html"]

    async def page(request: web.Request) -> web.Response:
        return _answer(request, index)

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["name"])
        if found is None:
            return json_error(404, "not_found", f"no dashboard file {request.path}")
        return _answer(request, found)

    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/{name}", asset)
