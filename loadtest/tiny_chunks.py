"""One client sending tiny pieces as fast as it can: what the relay's other hosts see.

Chunked encoding lets a client send a byte per chunk (six bytes on the wire), and a
WebSocket a byte per message (seven); the relay's parsers call back for each. One stack,
plus a second host with its own agent and upstream; each turn, a child process attacks
the first host for ``--seconds`` while this process sends a small GET to the second host
every 10 ms and times it. Turns: no attack; a chunked upload of 16 KiB chunks (for
comparison); of 1-byte chunks; a WebSocket of 1-byte messages (read back from the
upstream's echo). Prints the attack's wire rate, the relay's CPU and the GETs' latency.
A reported figure, not a goal.

    python -m loadtest.tiny_chunks [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time

import aiohttp

from loadtest.common import (
    BIN,
    ROOT,
    api,
    cpu_seconds,
    free_port,
    run,
    stack,
    upstream_argv,
    wait_http,
)

#: Attacks by name: how one write of it looks (None: no attack).
ATTACKS: dict[str, bytes | None] = {
    "none": None,
    "16 KiB chunks": b"4000\r\n" + b"x" * 16384 + b"\r\n",
    "1-byte chunks": b"1\r\nx\r\n" * 20_000,
    # Masked (with a zero key, as the RFC allows) binary frames of one byte.
    "1-byte WebSocket messages": b"\x82\x81\x00\x00\x00\x00x" * 20_000,
}


async def _attack(port: int, host: str, name: str, seconds: float) -> int:
    """Write ``ATTACKS[name]`` over and over for ``seconds``; the bytes written."""
    piece = ATTACKS[name]
    assert piece is not None  # noqa: S101 - "none" never gets here
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    websocket = name.endswith("messages")
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"the upgrade was answered {head[:60]!r}")

        async def read_echoes() -> None:
            while await reader.read(1 << 20):
                pass

        echoes = asyncio.ensure_future(read_echoes())
    else:
        writer.write(
            f"POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        writer.write(piece)
        await writer.drain()
        sent += len(piece)
    if websocket:
        echoes.cancel()
    else:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 60)
        if not status.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"the upload was answered {status!r}")
    writer.close()
    return sent


async def _gets(url: str, host: str, seconds: float) -> list[float]:
    """A small GET every 10 ms for ``seconds``; their latencies in ms."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with session.get(url + "/", headers={"Host": host}) as response:
                await response.read()
            latencies.append((time.perf_counter() - t0) * 1e3)
            await asyncio.sleep(0.01)
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(seconds: float = 3, verbose: bool = True) -> dict:
    """Per attack: its wire MB/s, the relay's CPU (cores), the other host's GET p50/p99."""
    turns: dict[str, dict] = {}
    with stack() as s:
        # The other host: its own upstream and agent, so that only the relay is shared.
        port = free_port()
        s.spawn("upstream-2", upstream_argv(port))
        wait_http(f"http://127.0.0.1:{port}/")
        other = api("POST", f"{s.relay_url}/api/hosts", {"name": "other", "slug": "other001"})
        argv = [str(BIN / "relay"), "agent", "--server", s.relay_url, "--token", other["token"]]
        s.spawn("agent-2", [*argv, "--to", f"http://127.0.0.1:{port}"])
        other_host = "other001.localhost"
        wait_http(s.relay_url + "/", headers={"Host": other_host})
        relay_port = int(s.relay_url.rsplit(":", 1)[1])
        for name, piece in ATTACKS.items():
            child = None
            if piece is not None:
                child = subprocess.Popen(
                    [sys.executable, "-m", "loadtest.tiny_chunks", "--attack", name,
                     "--port", str(relay_port), "--host", s.host_header, "--seconds", str(seconds)],
                    cwd=ROOT, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                time.sleep(0.3)  # under way
            before = cpu_seconds(s.relay.pid)
            t0 = time.monotonic()
            latencies = run(_gets(s.relay_url, other_host, seconds - 0.6))
            relay_cores = (cpu_seconds(s.relay.pid) - before) / (time.monotonic() - t0)
            sent = 0
            if child is not None:
                out, _ = child.communicate(timeout=120)
                if child.returncode:
                    raise RuntimeError(f"the attack {name!r} failed ({child.returncode})")
                sent = json.loads(out)["sent"]
            turns[name] = {
                "wire_mb_per_s": sent / seconds / 1e6,
                "relay_cores": relay_cores,
                "gets": len(latencies),
                "get_p50_ms": statistics.median(latencies),
                "get_p99_ms": _percentile(latencies, 0.99),
            }
    figures = {"seconds": seconds, "turns": turns}
    if verbose:
        report(figures)
    return figures


def report(f: dict) -> None:
    print(
        f"Tiny pieces: one client sends to a host as fast as it can for {f['seconds']:g} s;"
        " a small GET to another host every 10 ms meanwhile"
    )
    for name, t in f["turns"].items():
        print(
            f"  {name:26s}: {t['wire_mb_per_s']:6.1f} MB/s on the wire; relay"
            f" {t['relay_cores']:.2f} cores; the other host's GET p50 {t['get_p50_ms']:.1f} ms,"
            f" p99 {t['get_p99_ms']:.1f} ms ({t['gets']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--attack", choices=[a for a in ATTACKS if ATTACKS[a]], help="child")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    args = parser.parse_args()
    if args.attack:
        sent = run(_attack(args.port, args.host, args.attack, args.seconds))
        print(json.dumps({"sent": sent}))
        return
    measure(args.seconds)


if __name__ == "__main__":
    main()
