"""The agent's pooled HTTP/1.1 client, against real local servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest
import structlog
import uvloop

from relay.agent.http_client import UpstreamConnection, UpstreamPool
from tests.tls import make_certs


class User:
    """Records what the pool reports for one request."""

    def __init__(self, request: bytes, *, head: bool = False) -> None:
        self.request = request
        self.head = head
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.conn: UpstreamConnection | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.allowance = 1 << 30  # the pool's whole buffer

    def on_connection(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        if self.head:
            conn.expect_no_body()
        conn.write(self.request)

    def upstream_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers

    def upstream_body(self, data: bytes) -> None:
        self.body += data

    def upstream_end(self) -> None:
        self.done.set_result("end")

    def upstream_failed(self, error: Exception, *, retryable: bool) -> None:
        self.done.set_result(f"failed retryable={retryable}")

    def upstream_writable(self) -> None:
        pass

    def read_allowance(self) -> int:
        return self.allowance


class Server:
    """A raw TCP server answering each request head with the next scripted reply."""

    def __init__(self, replies: list[bytes], *, close_after: bool = False) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while self.replies:
                await reader.readuntil(b"\r\n\r\n")
                reply = self.replies.pop(0)
                if not reply:
                    break  # close without an answer, as a keep-alive timeout does
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    break
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def pool(url: str, limit: int = 10) -> UpstreamPool:
    return UpstreamPool(url, limit=limit, log=structlog.get_logger())


async def run(p: UpstreamPool, user: User) -> str:
    p.acquire(user)
    async with asyncio.timeout(5):
        return await user.done


async def test_keep_alive_connections_are_reused():
    server = Server([OK, OK, OK])
    async with server as url:
        p = pool(url)
        for _ in range(3):
            user = User(GET)
            assert await run(p, user) == "end"
            assert (user.status, user.body) == (200, b"hello")
        assert server.connections == 1
        assert p.open == 1
        await p.close()


async def test_a_head_response_ends_at_its_head_and_the_connection_is_reused():
    server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", OK])
    async with server as url:
        p = pool(url)
        head = User(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
        assert await run(p, head) == "end"
        assert head.body == b""
        assert ("Content-Length", "1000") in head.headers
        after = User(GET)
        assert await run(p, after) == "end"
        assert after.body == b"hello"
        assert server.connections == 1
        await p.close()


async def test_a_body_delimited_by_close_ends_at_the_close():
    server = Server([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"], close_after=True)
    async with server as url:
        p = pool(url)
        user = User(GET)
        assert await run(p, user) == "end"
        assert user.body == b"all of it"
        await p.close()


async def test_interim_answers_are_skipped():
    server = Server([b"HTTP/1.1 100 Continue\r\n\r\n" + OK])
    async with server as url:
        p = pool(url)
        user = User(GET)
        assert await run(p, user) == "end"
        assert (user.status, user.body) == (200, b"hello")
        await p.close()


async def test_a_reused_connection_closed_before_answering_is_reported_retryable():
    server = Server([OK, b""])
    async with server as url:
        p = pool(url)
        assert await run(p, User(GET)) == "end"
        # The server takes the second request on the same connection and closes it
        # without a byte of answer: the request may be retried on a new connection.
        assert await run(p, User(GET)) == "failed retryable=True"
        assert server.connections == 1
        await p.close()


async def test_a_new_connection_closed_before_answering_is_not_retryable():
    server = Server([b""])
    async with server as url:
        p = pool(url)
        assert await run(p, User(GET)) == "failed retryable=False"
        await p.close()


async def test_requests_beyond_the_limit_wait_for_a_free_connection():
    server = Server([OK, OK])
    async with server as url:
        p = pool(url, limit=1)
        first, second = User(GET), User(GET)
        p.acquire(first)
        p.acquire(second)
        async with asyncio.timeout(5):
            assert await first.done == "end"
            assert await second.done == "end"
        assert server.connections == 1
        await p.close()


async def test_an_unreachable_upstream_fails_the_request():
    server = Server([])
    async with server as url:
        pass  # closed: nothing listens there any more
    p = pool(url)
    assert await run(p, User(GET)) == "failed retryable=False"
    assert p.open == 0
    await p.close()


async def test_a_malformed_answer_fails_the_request():
    server = Server([b"HTTP/1.1 abc nonsense\r\n\r\n"])
    async with server as url:
        p = pool(url)
        assert await run(p, User(GET)) == "failed retryable=False"
        await p.close()


class Keeper(User):
    """Keeps the very objects it is handed, to be read only at the end."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.pieces: list[bytes] = []

    def upstream_body(self, data: bytes) -> None:
        self.pieces.append(data)


def serving_fills(size: int, piece: int):  # noqa: ANN201 - a start_server handler
    """A handler answering ``GET /<c>`` with ``size`` bytes of c, ``piece`` at a time."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        fill = head.split(b" ")[1][1:2]  # GET /a -> b"a"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // piece):
            writer.write(fill * piece)
            await writer.drain()
            await asyncio.sleep(0)  # the other connections' pieces come between
        writer.write(fill * (size % piece))
        await writer.drain()
        writer.close()

    return handle


async def fetch_fills(p: UpstreamPool, size: int) -> list[Keeper]:
    """Four requests at once, each answered by ``serving_fills``; each body checked whole."""
    users = {
        c: Keeper(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % c) for c in (b"a", b"b", b"c", b"d")
    }
    for user in users.values():
        p.acquire(user)
    async with asyncio.timeout(20):
        assert await asyncio.gather(*(u.done for u in users.values())) == ["end"] * 4
    for fill, user in users.items():
        assert b"".join(user.pieces) == fill * size
    return list(users.values())


async def test_connections_reading_into_the_pools_one_buffer_each_get_their_own_bytes():
    # Four answers of 1 MiB each, written in pieces that interleave on the loop: every
    # read of every connection lands in the same buffer, and what each user is handed
    # must be its own bytes, not a view that the next read overwrites.
    server = await asyncio.start_server(serving_fills(1 << 20, 50_000), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = pool(f"http://127.0.0.1:{port}")
    for user in await fetch_fills(p, 1 << 20):
        assert user.conn is not None
        assert user.conn.get_buffer(-1) is p.read_buffer
    await p.close()
    server.close()


async def test_reads_are_no_larger_than_the_users_stream_may_take():
    # A stream out of credit (its client reads nothing) takes a read floor at a time:
    # a whole buffer's read would wait in memory beyond the window, for every stream.
    server = await asyncio.start_server(serving_fills(300_000, 100_000), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = pool(f"http://127.0.0.1:{port}")
    user = Keeper(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    user.allowance = 4096
    assert await run(p, user) == "end"
    assert b"".join(user.pieces) == b"a" * 300_000
    assert max(len(piece) for piece in user.pieces) <= 4096
    await p.close()
    server.close()


async def test_a_response_of_tiny_chunks_reaches_the_user_in_few_pieces():
    # 20,000 chunks of one byte: each used to become a tunnel frame of its own.
    body = bytes(range(256)) * 78 + bytes(32)
    chunks = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    async with Server([reply]) as url:
        p = pool(url)
        user = Keeper(GET)
        assert await run(p, user) == "end"
        assert b"".join(user.pieces) == body
        assert len(user.pieces) <= 16  # a piece per read (~120 KB of chunks arrive)
        await p.close()


def test_an_https_upstream_read_into_the_shared_buffer_under_uvloop(tmp_path, monkeypatch):
    # uvloop's TLS transport decrypts into the pool's buffer (a buffered protocol's
    # get_buffer); the agent runs on uvloop, these unit tests otherwise on asyncio's loop.
    certs = make_certs(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # the pool's default context trusts it
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(certs.cert, certs.key)

    async def main() -> None:
        handle = serving_fills(3 << 20, 100_000)
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_side)
        port = server.sockets[0].getsockname()[1]
        p = pool(f"https://127.0.0.1:{port}")
        try:
            await fetch_fills(p, 3 << 20)
        finally:  # a failure must not leave the loop unable to close
            await p.close()
            server.close()

    uvloop.run(main())


def test_only_http_upstreams_are_accepted():
    with pytest.raises(Exception, match="http"):
        UpstreamPool("ftp://x", limit=1, log=structlog.get_logger())
