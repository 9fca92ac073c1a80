"""`make fleet`: three relays on one Valkey behind `relay edge`, one host and its agent.

Everything on loopback: the edge (the local stand-in for Fly's proxy) on :8000, relays
m1..m3 on :8081..:8083, a demo service on :8090. Prints the host's URL and the admin
token; Ctrl-C stops all of it (the relays drain first).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from directory.embedded import EmbeddedValkey
from relay.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = ROOT / ".relay-fleet"
EDGE_PORT = 8000
RELAYS = {"m1": 8081, "m2": 8082, "m3": 8083}
SERVICE_PORT = 8090


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def add_host(admin_token: str) -> dict[str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{RELAYS['m1']}/api/hosts",
        data=json.dumps({"name": "demo"}).encode(),
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        host: dict[str, str] = json.load(answer)
    return host


async def main() -> int:
    configure_logging("console", "warning")
    DATA.mkdir(exist_ok=True)
    token_file = DATA / "admin-token"
    if not token_file.exists():
        token_file.write_text("ra_" + secrets.token_urlsafe(32) + "\n")
        token_file.chmod(0o600)
    admin_token = token_file.read_text().strip()
    store = EmbeddedValkey(DATA / "store")
    redis_url = await store.start()
    env = {"RELAY_ADMIN_TOKEN": admin_token, "RELAY_LOG_FORMAT": "json"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = DATA / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, argv: list[str]) -> None:
        with (logs / f"{name}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    argv,
                    env={**_base_env(), **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    relay = str(BIN / "relay")
    try:
        for machine, port in RELAYS.items():
            spawn(
                machine,
                [
                    relay,
                    "serve",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--machine-id",
                    machine,
                    "--redis-url",
                    redis_url,
                    "--key-prefix",
                    "fleet",
                    "--data-dir",
                    str(DATA / machine),
                ],
            )
        edge = [relay, "edge", "--listen", f"127.0.0.1:{EDGE_PORT}"]
        for machine, port in RELAYS.items():
            edge += ["--machine", f"{machine}=http://127.0.0.1:{port}"]
        spawn("edge", edge)
        for port in RELAYS.values():
            wait_http(f"http://127.0.0.1:{port}/healthz")
        spawn(
            "service",
            [
                sys.executable,
                "-m",
                "http.server",
                str(SERVICE_PORT),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(ROOT),
            ],
        )
        # One demo host across runs (its token is shown only when it is made).
        saved = DATA / "host.json"
        if saved.exists():
            host = json.loads(saved.read_text())
        else:
            host = add_host(admin_token)
            saved.write_text(json.dumps(host))
            saved.chmod(0o600)
        spawn(
            "agent",
            [
                relay,
                "agent",
                "--server",
                f"http://127.0.0.1:{EDGE_PORT}",
                "--token",
                host["token"],
                "--to",
                f"http://127.0.0.1:{SERVICE_PORT}",
            ],
        )
        url = f"http://{host['slug']}.localhost:{EDGE_PORT}/"
        print(
            f"fleet: relays {', '.join(f'{m}=:{p}' for m, p in RELAYS.items())} "
            f"behind relay edge on :{EDGE_PORT}, one Valkey ({redis_url})"
        )
        print(f"  host {host['slug']}: {url}   (try: curl {url})")
        print(
            f'  machines: curl -H "Authorization: Bearer $(cat {token_file})" '
            f"http://127.0.0.1:{RELAYS['m1']}/api/machines"
        )
        print(f"  logs in {logs}; Ctrl-C stops everything")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("fleet: stopping (the relays drain first)")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await store.stop()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "REDIS_URL"))}


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
