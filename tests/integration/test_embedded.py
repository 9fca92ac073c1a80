"""The embedded Valkey: a real child process, persistent, with clear failures and no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from directory.embedded import MAX_UNIX_SOCKET_PATH, EmbeddedValkey
from directory.errors import EmbeddedStoreError
from directory.store import connect
from directory.supervisor import SupervisedValkey
from tests.servers import wait_for


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def server(tmp_path):
    store = EmbeddedValkey(tmp_path / "data")
    yield store
    await store.stop()


async def test_it_starts_on_a_private_unix_socket_and_answers(server, tmp_path):
    url = await server.start()
    socket_path = tmp_path / "data" / "valkey.sock"
    assert url == f"unix://{socket_path}" == server.url
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
    client = await connect(url)
    try:
        assert await client.set("k", b"v")
        assert await client.get("k") == b"v"
        config = await client.config_get("appendonly")
        assert config == {"appendonly": "yes"}
    finally:
        await client.aclose()


async def test_data_survives_a_stop_and_start_in_the_same_dir(tmp_path):
    first = EmbeddedValkey(tmp_path)
    client = await connect(await first.start())
    try:
        await client.set("kept", b"across restarts")
        await client.zadd("index", {"a": 1.0})
    finally:
        await client.aclose()
    await first.stop()

    second = EmbeddedValkey(tmp_path)
    client = await connect(await second.start())
    try:
        assert await client.get("kept") == b"across restarts"
        assert await client.zrange("index", 0, -1) == [b"a"]
    finally:
        await client.aclose()
        await second.stop()


async def test_the_lifecycle_is_explicit(server):
    with pytest.raises(EmbeddedStoreError, match="not running"):
        _ = server.url
    await server.start()
    with pytest.raises(EmbeddedStoreError, match="already started"):
        await server.start()
    await server.stop()
    await server.stop()  # idempotent
    with pytest.raises(EmbeddedStoreError, match="stopped"):
        await server.start()
    with pytest.raises(EmbeddedStoreError, match="not running"):
        _ = server.url


async def test_stop_terminates_the_server_process(server):
    await server.start()
    pid = server.pid
    assert pid is not None and _alive(pid)
    await server.stop()
    assert not _alive(pid)


async def test_a_second_server_on_the_same_data_dir_is_refused(server, tmp_path):
    await server.start()
    with pytest.raises(EmbeddedStoreError, match="already running"):
        await EmbeddedValkey(tmp_path / "data").start()


async def test_a_data_dir_too_long_for_a_unix_socket_falls_back_to_loopback_tcp(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(deep / "valkey.sock")) > MAX_UNIX_SOCKET_PATH
    store = EmbeddedValkey(deep)
    url = await store.start()
    try:
        assert url.startswith("redis://127.0.0.1:")
        client = await connect(url)
        try:
            assert await client.config_get("bind") == {"bind": "127.0.0.1"}
            assert await client.config_get("protected-mode") == {"protected-mode": "yes"}
        finally:
            await client.aclose()
    finally:
        await store.stop()


async def test_a_bad_config_fails_with_the_servers_own_complaint(tmp_path):
    store = EmbeddedValkey(tmp_path, extra_config={"no-such-directive": "1"})
    with pytest.raises(EmbeddedStoreError) as caught:
        await store.start()
    message = str(caught.value)
    assert "exited with status" in message
    assert "no-such-directive" in message  # the tail of the server's log
    assert caught.value.code == "embedded_store_failed"


async def test_an_unusable_data_dir_fails_clearly(tmp_path):
    (tmp_path / "valkey").write_text("a file where the store's directory should be")
    with pytest.raises(EmbeddedStoreError, match="cannot use .*valkey"):
        await EmbeddedValkey(tmp_path).start()


async def test_a_missing_binary_fails_clearly(tmp_path):
    with pytest.raises(EmbeddedStoreError, match="cannot start the Valkey server"):
        await EmbeddedValkey(tmp_path, binary=tmp_path / "nope").start()


async def test_a_server_that_never_answers_times_out_and_is_killed(tmp_path):
    fake = tmp_path / "silent-server"
    fake.write_text("#!/bin/sh\necho 'pretending to start'\nexec sleep 30\n")
    fake.chmod(0o755)
    store = EmbeddedValkey(tmp_path / "data", binary=fake, start_timeout=0.3)
    with pytest.raises(EmbeddedStoreError, match="did not answer PING within 0.3 s") as caught:
        await store.start()
    assert "pretending to start" in str(caught.value)
    assert store.pid is not None and not _alive(store.pid)
    with pytest.raises(EmbeddedStoreError):
        await store.start()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_the_server_dies_with_its_parent(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import asyncio, pathlib, sys, time
                from directory.embedded import EmbeddedValkey

                async def main():
                    store = EmbeddedValkey(pathlib.Path({str(tmp_path)!r}))
                    await store.start()
                    print("PID", store.pid, flush=True)
                    time.sleep(60)

                asyncio.run(main())
                """
            ),
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    pid = None
    try:
        line = b""
        while not line.startswith(b"PID "):  # skip log lines
            line = parent.stdout.readline()
            assert line, "the parent exited before starting the server"
        pid = int(line.split()[1])
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        started = time.monotonic()
        await wait_for(lambda: not _alive(pid), timeout=10, what="the orphaned server to exit")
        assert time.monotonic() - started < 10
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if pid is not None and _alive(pid):  # the test failed: leave no orphan behind
            os.kill(pid, signal.SIGKILL)


async def test_a_data_dir_with_spaces_and_percent_signs_works(tmp_path):
    store = EmbeddedValkey(tmp_path / "my data 100%")
    client = await connect(await store.start())
    try:
        assert await client.ping()
    finally:
        await client.aclose()
        await store.stop()


async def test_a_killed_server_is_reaped_restarted_and_keeps_its_data(tmp_path):
    store = SupervisedValkey(tmp_path, check_interval=0.05, min_backoff=0.05)
    url = await store.start()
    try:
        client = await connect(url)
        try:
            await client.set("kept", b"after a kill")
            await client.execute_command("BGREWRITEAOF")  # on disk now, whatever fsync says

            async def rewritten() -> bool:
                info = await client.info("persistence")
                return info["aof_rewrite_in_progress"] == 0 and info["aof_rewrites"] >= 1

            await wait_for(rewritten, timeout=5, what="AOF rewrite")
        finally:
            await client.aclose()
        first = store.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while store.restarts < 1:
            assert time.monotonic() < deadline, "not restarted"
            await asyncio.sleep(0.02)
        assert store.deaths == 1
        assert not _alive(first)  # reaped: no zombie left behind
        assert store.pid is not None and store.pid != first
        client = await connect(url)  # same URL: clients find it again
        try:
            assert await client.get("kept") == b"after a kill"
        finally:
            await client.aclose()
    finally:
        await store.stop()
    assert store.pid is None
