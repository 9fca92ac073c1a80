"""A real PowerDNS Authoritative server for tests: sqlite3 backend, loopback only.

``start_pdns(path, zones)`` starts ``pdns_server`` (Debian's ``pdns-server`` and
``pdns-backend-sqlite3``; ``scripts/ensure-test-deps.sh`` installs them) with its database,
config and control socket under ``path``, its HTTP API and its DNS port on 127.0.0.1 at
random free ports, creates the zones, and returns a :class:`PowerDns` handle. Synchronous,
like ``tests.servers.start_valkey``, so a session-scoped sync fixture can own it.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import httpx

SCHEMA_PATHS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)
API_KEY = "test-pdns-api-key-0123456789"


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port for both TCP and UDP")


def pdns_binary() -> str | None:
    return shutil.which("pdns_server") or (
        "/usr/sbin/pdns_server" if Path("/usr/sbin/pdns_server").exists() else None
    )


@dataclass
class PowerDns:
    """A running server: its API (``api_url``, ``api_key``) and its DNS port."""

    api_url: str
    api_key: str
    dns_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.api_url}/api/v1/servers/localhost",
            headers={"X-API-Key": self.api_key},
            timeout=10,
        )

    def create_zone(self, zone: str) -> None:
        name = zone.rstrip(".") + "."
        body = {
            "name": name,
            "kind": "Native",
            "nameservers": [],
            "rrsets": [
                {
                    "name": name,
                    "type": "SOA",
                    "ttl": 300,
                    "records": [
                        {
                            "content": f"ns1.{name} hostmaster.{name} 1 10800 3600 604800 300",
                            "disabled": False,
                        }
                    ],
                }
            ],
        }
        with self.client() as c:
            r = c.post("/zones", json=body)
            if r.status_code == 409:  # exists: empty it of everything but the SOA
                self.reset_zone(zone)
                return
            r.raise_for_status()

    def zone(self, zone: str) -> dict:
        with self.client() as c:
            r = c.get(f"/zones/{zone.rstrip('.')}.")
            r.raise_for_status()
            return r.json()

    def rrsets(self, zone: str) -> list[dict]:
        return [r for r in self.zone(zone)["rrsets"] if r["type"] != "SOA"]

    def serial(self, zone: str) -> int:
        return int(self.zone(zone)["edited_serial"])

    def patch(self, zone: str, rrsets: list[dict]) -> None:
        with self.client() as c:
            r = c.patch(f"/zones/{zone.rstrip('.')}.", json={"rrsets": rrsets})
            assert r.status_code == 204, r.text

    def reset_zone(self, zone: str) -> None:
        doomed = [
            {"name": r["name"], "type": r["type"], "changetype": "DELETE"}
            for r in self.rrsets(zone)
        ]
        if doomed:
            self.patch(zone, doomed)

    def resolve(self, name: str, rdtype: str = "CNAME") -> list[str]:
        """Ask the server itself over DNS (UDP) for ``name``; the answer's contents."""
        query = dns.message.make_query(name.rstrip(".") + ".", dns.rdatatype.from_text(rdtype))
        answer = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=2)
        return sorted(
            item.to_text().rstrip(".")
            for rrset in answer.answer
            if rrset.rdtype == dns.rdatatype.from_text(rdtype)
            for item in rrset
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_pdns(path: Path, zones: list[str]) -> PowerDns:
    binary = pdns_binary()
    if binary is None:
        raise RuntimeError(
            "pdns_server is not installed: run scripts/ensure-test-deps.sh (make test does)"
        )
    schema = next((p for p in SCHEMA_PATHS if p.exists()), None)
    if schema is None:
        raise RuntimeError("pdns-backend-sqlite3's schema is missing: install it")
    db = path / "pdns.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(schema.read_text())
    api_port, dns_port = _free_port(), _free_port()
    (path / "pdns.conf").write_text(
        "\n".join(
            [
                "launch=gsqlite3",
                f"gsqlite3-database={db}",
                "api=yes",
                f"api-key={API_KEY}",
                "webserver=yes",
                "webserver-address=127.0.0.1",
                f"webserver-port={api_port}",
                "webserver-allow-from=127.0.0.0/8",
                f"local-address=127.0.0.1:{dns_port}",
                f"socket-dir={path}",
                "guardian=no",
                "daemon=no",
                "disable-syslog=yes",
                "loglevel=3",
                # No queries to the outside world (security polling), no stale answers.
                "security-poll-suffix=",
                "cache-ttl=0",
                "query-cache-ttl=0",
                "negquery-cache-ttl=0",
                "",
            ]
        )
    )
    log_path = path / "pdns.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config-dir={path}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = PowerDns(f"http://127.0.0.1:{api_port}", API_KEY, dns_port, proc, log_path)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pdns_server exited early:\n{log_path.read_text()[-3000:]}")
        try:
            with server.client() as c:
                if c.get(f"{server.api_url}/api/v1/servers/localhost").status_code == 200:
                    break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"pdns_server did not answer:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    for zone in zones:
        server.create_zone(zone)
    return server
