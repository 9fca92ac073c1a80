"""A client uploading 1-byte chunks: what it costs the relay and the host's other requests.

Chunked encoding lets a client send a byte per chunk, six bytes on the wire for each; the
relay's parser calls back for every chunk. One stack; for each turn one raw connection
uploads chunked as fast as it can (a turn with 16 KiB chunks for comparison, and one
without an upload), while a second client sends a small GET to the same host every
10 ms and times it. Prints the upload's wire rate, the relay's and the agent's CPU, and
the GETs' latency. A reported figure, not a goal.

    python -m loadtest.tiny_chunks [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from loadtest.common import cpu_seconds, run, stack

# Each turn: what one write of the upload is (None: no upload).
_TURNS: dict[str, bytes | None] = {
    "no upload": None,
    "16 KiB chunks": b"4000\r\n" + b"x" * 16384 + b"\r\n",
    "1-byte chunks": b"1\r\nx\r\n" * 20_000,
}


async def _upload(port: int, host: str, piece: bytes, seconds: float) -> int:
    """Upload ``piece`` after ``piece`` for ``seconds``; the bytes written."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        writer.write(piece)
        await writer.drain()
        sent += len(piece)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 60)
    writer.close()
    if not status.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"the upload was answered {status!r}")
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
    """Per turn: the upload's wire MB/s, relay and agent CPU (cores), GET p50/p99 (ms)."""
    turns: dict[str, dict] = {}
    with stack() as s:
        port = int(s.relay_url.rsplit(":", 1)[1])
        procs = {"relay": s.relay.pid, "agent": s.agent.pid}
        for name, piece in _TURNS.items():
            before = {k: cpu_seconds(p) for k, p in procs.items()}
            t0 = time.monotonic()

            async def turn(piece: bytes | None = piece) -> tuple[int, list[float]]:
                gets = asyncio.ensure_future(_gets(s.relay_url, s.host_header, seconds))
                sent = 0 if piece is None else await _upload(port, s.host_header, piece, seconds)
                return sent, await gets

            sent, latencies = run(turn())
            elapsed = time.monotonic() - t0
            after = {k: cpu_seconds(p) for k, p in procs.items()}
            turns[name] = {
                "wire_mb_per_s": sent / seconds / 1e6,
                "relay_cores": (after["relay"] - before["relay"]) / elapsed,
                "agent_cores": (after["agent"] - before["agent"]) / elapsed,
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
        f"Tiny chunks: one client uploads chunked as fast as it can for {f['seconds']:g} s"
        " while another sends a small GET to the same host every 10 ms"
    )
    for name, t in f["turns"].items():
        print(
            f"  {name:14s}: upload {t['wire_mb_per_s']:6.1f} MB/s on the wire;"
            f" relay {t['relay_cores']:.2f}, agent {t['agent_cores']:.2f} cores;"
            f" GET p50 {t['get_p50_ms']:.1f} ms, p99 {t['get_p99_ms']:.1f} ms ({t['gets']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    measure(args.seconds)


if __name__ == "__main__":
    main()
