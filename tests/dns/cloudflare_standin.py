"""A local stand-in for Cloudflare's API v4 DNS records, for tests. It can fail on demand.

Speaks the shapes the provider uses: ``GET /client/v4/zones/{zone_id}/dns_records``
(``page``, ``per_page``, ``name``; ``result_info`` with ``total_pages``) and ``POST
/client/v4/zones/{zone_id}/dns_records/batch`` (``deletes``, ``patches``, ``puts``,
``posts``, applied in that order in one transaction). Every answer is the v4 envelope.
It enforces what matters to us: Bearer auth, a CNAME alone at its name, no identical
duplicates (errors 81053 / 81058), and TTL 1 for proxied records.

Failures: ``fail(status, times=n, on="list"|"batch"|"any", retry_after=...)`` answers the
next ``n`` matching requests with that status (``times=None``: until ``heal()``), and
``malformed(on=...)`` answers a 200 whose body is not JSON.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

API = "/client/v4"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _envelope(result, *, info=None, status=200, errors=()):
    body = {"success": not errors, "errors": list(errors), "messages": [], "result": result}
    if info is not None:
        body["result_info"] = info
    return web.json_response(body, status=status)


@dataclass
class Failure:
    status: int
    times: int | None
    on: str
    retry_after: str | None
    malformed: bool = False


@dataclass
class CloudflareStandIn:
    """The stand-in's state: zones (id -> records), the token, counters, failures."""

    token: str = "cf-test-token"
    zones: dict[str, dict[str, dict]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"list": 0, "batch": 0})
    failures: list[Failure] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # when each injected failure went out
    url: str = ""
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def zone(self, zone_id: str) -> dict[str, dict]:
        return self.zones.setdefault(zone_id, {})

    def add(
        self,
        zone_id: str,
        name: str,
        type_: str,
        content: str,
        *,
        comment: str | None = None,
        ttl: int = 300,
    ) -> dict:
        """Put a record there, as someone using the dashboard would."""
        record = self._record(
            {
                "name": name,
                "type": type_,
                "content": content,
                "ttl": ttl,
                "comment": comment,
                "proxied": False,
            }
        )
        self.zone(zone_id)[record["id"]] = record
        return record

    def fail(
        self, status: int, *, times: int | None = 1, on: str = "any", retry_after: str | None = None
    ) -> None:
        self.failures.append(Failure(status, times, on, retry_after))

    def malformed(self, *, times: int | None = 1, on: str = "any") -> None:
        self.failures.append(Failure(200, times, on, None, malformed=True))

    def heal(self) -> None:
        self.failures.clear()

    def _record(self, body: dict, record_id: str | None = None) -> dict:
        proxied = bool(body.get("proxied"))
        now = _now()
        return {
            "id": record_id or f"{next(self._ids):032x}",
            "name": body["name"].rstrip(".").lower(),
            "type": body["type"],
            "content": body["content"],
            "ttl": 1 if proxied else int(body.get("ttl", 1)),
            "proxied": proxied,
            "comment": body.get("comment") or None,
            "created_on": now,
            "modified_on": now,
        }

    def _failure(self, kind: str) -> web.Response | None:
        for failure in self.failures:
            if failure.on not in {kind, "any"}:
                continue
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
            self.failed_at.append(time.time())
            if failure.malformed:
                return web.Response(status=200, text="<html>gateway hiccup</html>")
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            code = {429: 971, 401: 10000, 403: 10000}.get(failure.status, 10001)
            body = {
                "success": False,
                "errors": [{"code": code, "message": f"injected {failure.status}"}],
                "messages": [],
                "result": None,
            }
            return web.json_response(body, status=failure.status, headers=headers)
        return None

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def list_records(self, request: web.Request) -> web.Response:
        self.calls["list"] += 1
        if not self._authorized(request):
            return _envelope(
                None, status=401, errors=[{"code": 10000, "message": "Authentication error"}]
            )
        if (failed := self._failure("list")) is not None:
            return failed
        records = sorted(self.zone(request.match_info["zone"]).values(), key=lambda r: r["id"])
        name = request.query.get("name")
        if name:
            records = [r for r in records if r["name"] == name.lower()]
        page = int(request.query.get("page", "1"))
        per_page = int(request.query.get("per_page", "100"))
        total_pages = max(1, -(-len(records) // per_page))
        chunk = records[(page - 1) * per_page : page * per_page]
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(records),
            "total_pages": total_pages,
        }
        return _envelope(chunk, info=info)

    async def batch(self, request: web.Request) -> web.Response:
        self.calls["batch"] += 1
        if not self._authorized(request):
            return _envelope(
                None, status=401, errors=[{"code": 10000, "message": "Authentication error"}]
            )
        if (failed := self._failure("batch")) is not None:
            return failed
        zone = self.zone(request.match_info["zone"])
        body = await request.json()
        staged = dict(zone)
        result = {"deletes": [], "patches": [], "puts": [], "posts": []}
        try:
            for item in body.get("deletes", []):
                result["deletes"].append(staged.pop(item["id"]))
            for item in body.get("puts", []):
                if item["id"] not in staged:
                    raise _Refused(81044, f"record {item['id']} not found")
                del staged[item["id"]]
                record = self._record(item, item["id"])
                self._check(staged, record)
                staged[record["id"]] = record
                result["puts"].append(record)
            for item in body.get("posts", []):
                record = self._record(item)
                self._check(staged, record)
                staged[record["id"]] = record
                result["posts"].append(record)
        except KeyError as exc:
            return _envelope(
                None, status=404, errors=[{"code": 81044, "message": f"record not found: {exc}"}]
            )
        except _Refused as exc:
            return _envelope(None, status=400, errors=[{"code": exc.code, "message": exc.message}])
        zone.clear()
        zone.update(staged)
        return _envelope(result)

    @staticmethod
    def _check(staged: dict, record: dict) -> None:
        for other in staged.values():
            if other["name"] != record["name"]:
                continue
            if record["type"] == "CNAME" or other["type"] == "CNAME":
                raise _Refused(81053, "An A, AAAA, or CNAME record with that host already exists.")
            if other["type"] == record["type"] and other["content"] == record["content"]:
                raise _Refused(81058, "An identical record already exists.")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(API + "/zones/{zone}/dns_records", self.list_records)
        app.router.add_post(API + "/zones/{zone}/dns_records/batch", self.batch)
        return app

    async def start(self) -> CloudflareStandIn:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{API}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
