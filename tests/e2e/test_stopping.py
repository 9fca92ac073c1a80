"""Stopping `relay serve` by hand: Ctrl-C drains (and says so), a second Ctrl-C stops at once.

A relay alone (no other machine to move agents to) does not wait for agents to move: it
lets in-flight requests finish within --drain-timeout and exits.
"""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import time

import aiohttp
import httpx
import pytest

from relay.wire.protocol import PROTOCOL_VERSION, FrameCodec, Hello, Limits, Welcome
from tests.e2e.harness import RELAY, Proc, Relay, free_port, wait_until

pytestmark = pytest.mark.e2e

LONG_DRAIN = "60"


async def test_a_lone_relay_exits_on_ctrl_c_without_waiting_for_agents_to_move(cluster, upstream):
    relay = await cluster.relay("--drain-timeout", LONG_DRAIN)
    host = await relay.add_host("web")
    agent = cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    started = time.monotonic()
    relay.proc.signal(signal.SIGINT)
    assert await relay.proc.wait_exit(timeout=15) == 0
    took = time.monotonic() - started
    assert took < 10, f"took {took:.1f}s, as if waiting for the agent to move"
    log = relay.proc.log()
    assert '"peers": 0' in log and '"signal": "SIGINT"' in log
    assert '"relay.drained"' in log and "drain_window_exceeded" not in log
    assert agent.returncode() is None  # the agent keeps trying to reconnect


async def test_a_second_ctrl_c_stops_at_once_during_a_long_drain(cluster, upstream):
    relay = await cluster.relay("--drain-timeout", LONG_DRAIN)
    host = await relay.add_host("web")
    cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    async with relay.client(host["slug"], timeout=120) as client:
        slow = asyncio.create_task(client.get("/delay", params={"s": "100"}))
        await wait_until(lambda: upstream.state.concurrent == 1, what="the slow request upstream")
        relay.proc.signal(signal.SIGINT)
        await wait_until(lambda: '"relay.draining"' in relay.proc.log(), what="drain started")
        await asyncio.sleep(0.3)
        assert relay.proc.returncode() is None, "the drain waits for the in-flight request"
        started = time.monotonic()
        relay.proc.signal(signal.SIGINT)
        assert await relay.proc.wait_exit(timeout=15) == 130
        took = time.monotonic() - started
        assert took < 5, f"took {took:.1f}s to stop at once"
        assert '"relay.stopping_at_once"' in relay.proc.log()
        with pytest.raises(httpx.HTTPError):
            (await slow).raise_for_status()  # cut short, as a second Ctrl-C asks


async def test_on_a_terminal_ctrl_c_says_it_is_draining_and_for_how_long(
    cluster, upstream, tmp_path
):
    """stderr on a terminal: one sentence with the drain window and how to stop at once."""
    port = free_port()
    argv = [
        RELAY, "serve", "--listen", f"127.0.0.1:{port}", "--redis-url", cluster.redis_url,
        "--key-prefix", cluster.prefix, "--machine-id", "tty", "--data-dir", str(tmp_path / "d"),
        "--drain-timeout", "7", "--log-level", "warning",
    ]  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a short-lived child, waited on below
        argv, env=cluster.env(RELAY_LOG_FORMAT="auto"), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    os.set_blocking(master, False)
    seen = bytearray()

    def read() -> str:
        try:
            while chunk := os.read(master, 65536):
                seen.extend(chunk)
        except (BlockingIOError, OSError):
            pass
        return seen.decode(errors="replace")

    try:
        await wait_until(lambda: f"listening on http://127.0.0.1:{port}" in read(), timeout=20,
                         what="the start banner")  # fmt: skip
        assert "Ctrl-C drains" in read()
        relay = Relay(Proc("tty", argv, {}, tmp_path / "unused.log", popen=proc), port, "tty")
        host = await relay.add_host("web")
        cluster.agent(relay, host["token"], upstream.url)
        await relay.wait_online(host["slug"])
        proc.send_signal(signal.SIGINT)
        await wait_until(lambda: "Press Ctrl-C again to stop at once" in read(), what="notice")
        assert "no other machine to move 1 tunnel to" in read()
        assert "in-flight requests get up to 7 s (--drain-timeout)" in read()
        await wait_until(lambda: proc.poll() is not None, what="the relay exits")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        os.close(master)


async def test_a_tunnel_claimed_as_the_drain_begins_is_sent_on_at_once(cluster):
    # The claim is a store write: pausing the store's writes holds this tunnel's handshake
    # between its last draining check and joining the table, while the drain takes its
    # list of tunnels. It must still get 4001, not wait out the server's shutdown.
    if cluster.redis_cluster:
        pytest.skip("CLIENT PAUSE is per node")
    relay = await cluster.relay("--drain-timeout", LONG_DRAIN)
    host = await relay.add_host("late")
    codec = FrameCodec()
    store = await cluster.store()
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                f"ws://127.0.0.1:{relay.port}/tunnel",
                headers={"Authorization": f"Bearer {host['token']}"},
            )
            await store.client_pause(5000, all=False)  # writes wait; reads go on
            try:
                await ws.send_bytes(codec.message(Hello(PROTOCOL_VERSION, "test", Limits())))

                async def claim_waits() -> bool:
                    clients = await store.client_list()
                    return any(c["cmd"] == "evalsha" and "b" in c["flags"] for c in clients)

                await wait_until(claim_waits, timeout=4, what="the claim waiting on the store")
                relay.proc.signal(signal.SIGTERM)

                async def draining() -> bool:
                    async with httpx.AsyncClient() as c:
                        return (await c.get(f"{relay.url}/readyz")).status_code == 503

                await wait_until(draining, timeout=4, what="the drain began")
            finally:
                await store.client_unpause()
            # Held out of the drain, it would get nothing until the server's 60 s shutdown.
            welcome = await ws.receive(timeout=10)
            assert isinstance(codec.decode(welcome.data)[0], Welcome)
            closing = await ws.receive(timeout=10)
            assert closing.type is aiohttp.WSMsgType.CLOSE, closing
            assert closing.data == 4001
            await ws.close()
        assert await relay.proc.wait_exit(timeout=15) == 0
    finally:
        await store.aclose()
