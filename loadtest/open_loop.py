"""Open-loop GET client, run as its own process so its cost stays out of the bench's loop.

Sends one GET every 1/rate s whatever the latency, to each target in turn: a warm-up
that is not counted, then ``--seconds`` measured. With ``--rounds R`` the targets take
turns R times (A B A B ...), each turn seconds/R long, so drift on a shared machine hits
them alike. To keep the client's own cost (and its share of the 2 cores) small, it is a
bare asyncio protocol on uvloop over keep-alive HTTP/1.1 connections (a pool that grows
when every connection is busy), driven by timer callbacks, no task per request.
Latency of a request: from its write to the last byte of its body. Prints one JSON
object: per target, the count of 200 answers, failures, latency quantiles (ms), how late
the sends were against the schedule (ms) and the client's own CPU µs per request.

    python -m loadtest.open_loop --rate 500 --seconds 10 \\
        --target direct http://127.0.0.1:P/ --target relayed http://127.0.0.1:R/ slug.localhost:R
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from urllib.parse import urlsplit

from loadtest.common import pct, run

TIMEOUT = 30.0  # a request not answered by then counts as failed


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, response parsed by hand."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.t0 = 0.0
        self.record = False
        self.busy = False
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, record: bool) -> None:
        self.busy, self.record, self.buf = True, record, bytearray()
        self.t0 = time.perf_counter()
        self.transport.write(self.target.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        done = self._complete()
        if done is None:
            return
        status, keep = done
        self.busy = False
        self.target.finished(self, status, time.perf_counter() - self.t0, self.record)
        if not keep:
            self.transport.close()

    def _complete(self) -> tuple[int, bool] | None:
        """(status, keep-alive) once the whole response is in ``buf``; None before."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        body = self.buf[end + 4 :]
        if "content-length" in fields:
            if len(body) < int(fields["content-length"]):
                return None
        elif "chunked" in fields.get("transfer-encoding", ""):
            if not _chunked_done(body):
                return None
        else:
            return None  # read until close: connection_lost finishes it
        return status, fields.get("connection") != "close"

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.busy:
            self.busy = False
            self.target.finished(self, "connection lost", 0.0, self.record)
        self.target.forget(self)


def _chunked_done(body: bytearray) -> bool:
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return False
        size = int(bytes(body[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2 + size + 2
        if size == 0:
            return body.find(b"\r\n\r\n", line_end) >= 0 or body.endswith(b"0\r\n\r\n")
        if pos > len(body):
            return False


class Target:
    def __init__(self, name: str, url: str, host: str | None) -> None:
        parts = urlsplit(url)
        self.name, self.url = name, url
        self.addr = (parts.hostname, parts.port or 80)
        self.host = host or parts.netloc
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        self.idle: list[Conn] = []
        self.conns: set[Conn] = set()
        self.latencies: list[float] = []
        self.late: list[float] = []
        self.failures: dict[str, int] = {}
        self.pending = 0
        self.cpu = 0.0
        self.sent = 0
        self.all_done: asyncio.Future | None = None

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Conn(self), *self.addr)
        self.conns.add(conn)
        return conn

    def fire(self, scheduled: float, record: bool) -> None:
        """Timer callback: send one request now on an idle connection (or a new one)."""
        self.pending += 1
        late = time.perf_counter() - scheduled
        if record:
            self.late.append(late)
        if self.idle:
            self.idle.pop().send(record)
        else:
            asyncio.get_running_loop().create_task(self._send_new(record))

    async def _send_new(self, record: bool) -> None:
        try:
            conn = await self.connect()
        except OSError as exc:
            self.finished(None, type(exc).__name__, 0.0, record)
            return
        conn.send(record)

    def finished(self, conn: Conn | None, status, seconds: float, record: bool) -> None:
        if record:
            if status == 200:
                self.latencies.append(seconds)
            else:
                self.failures[str(status)] = self.failures.get(str(status), 0) + 1
        if conn is not None and not conn.closed and not conn.busy:
            self.idle.append(conn)
        self.pending -= 1
        if self.pending == 0 and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)

    def forget(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    async def burst(self, rate: float, seconds: float, record: bool) -> None:
        """``rate * seconds`` GETs on a fixed schedule (timer callbacks), then wait for all."""
        loop = asyncio.get_running_loop()
        cpu0 = cpu_self()
        n = int(rate * seconds)
        start_perf, start_loop = time.perf_counter() + 0.01, loop.time() + 0.01
        for i in range(n):
            loop.call_at(start_loop + i / rate, self.fire, start_perf + i / rate, record)
        await asyncio.sleep(n / rate + 0.01)
        if self.pending:
            self.all_done = loop.create_future()
            try:
                await asyncio.wait_for(self.all_done, TIMEOUT)
            except TimeoutError:
                if record:
                    self.failures["timeout"] = self.failures.get("timeout", 0) + self.pending
                for conn in list(self.conns):
                    conn.transport.close()
                self.pending = 0
            self.all_done = None
        if record:
            self.cpu += cpu_self() - cpu0
            self.sent += n

    def figures(self) -> dict:
        lat = self.latencies or [float("nan")]
        return {
            "url": self.url,
            "host": self.host,
            "ok": len(self.latencies),
            "failed": sum(self.failures.values()),
            "failures": self.failures,
            "connections": len(self.conns),
            "p50_ms": pct(lat, 0.5),
            "p90_ms": pct(lat, 0.9),
            "p99_ms": pct(lat, 0.99),
            "max_ms": max(lat) * 1000,
            "mean_ms": sum(lat) / len(lat) * 1000,
            "late_p99_ms": pct(self.late or [0.0], 0.99),
            "client_cpu_us_per_request": self.cpu / max(1, self.sent) * 1e6,
        }


async def main_async(args: argparse.Namespace) -> dict:
    targets = [Target(*(t + [None])[:3]) for t in args.target]
    for target in targets:
        target.idle = [await target.connect() for _ in range(args.connections)]
        await target.burst(args.rate, args.warmup, record=False)
    for _ in range(args.rounds):
        for target in targets:
            await target.burst(args.rate, args.seconds / args.rounds, record=True)
    for target in targets:
        for conn in list(target.conns):
            conn.transport.close()
    return {t.name: t.figures() for t in targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500, help="requests/s")
    parser.add_argument("--seconds", type=float, default=10, help="measured, per target")
    parser.add_argument("--warmup", type=float, default=1, help="per target, not counted (s)")
    parser.add_argument("--rounds", type=int, default=1, help="turns the targets take")
    parser.add_argument("--connections", type=int, default=4, help="opened up front")
    parser.add_argument(
        "--target",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME URL [HOST]",
        help="a name, the URL to GET and an optional Host header; repeat for each target",
    )
    args = parser.parse_args()
    for t in args.target:
        if len(t) not in (2, 3):
            parser.error("--target takes NAME URL [HOST]")
    print(json.dumps(run(main_async(args))))


if __name__ == "__main__":
    main()
