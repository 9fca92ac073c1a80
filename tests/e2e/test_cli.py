"""The `relay` admin commands against a real relay: output, and what each exit status means.

0 ok, 1 refused by the API, 2 usage, 3 admin token refused, 4 relay unreachable (no
answer, or an answer no relay gives: a plain aiohttp server on loopback stands in for a
wrong --server).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess

import pytest
from aiohttp import web

from tests.e2e.harness import RELAY, free_port, wait_until

pytestmark = pytest.mark.e2e


async def run(cluster, *args, env=None, tty=False):
    """Run `relay *args`; returns (exit status, stdout, stderr). ``tty``: stdout is a terminal."""
    env = env if env is not None else cluster.env()
    if not tty:
        proc = await asyncio.create_subprocess_exec(
            RELAY, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            RELAY, *args, env=env, stdout=slave, stderr=subprocess.PIPE
        )
        os.close(slave)
        err = await asyncio.wait_for(proc.stderr.read(), 30)
        await asyncio.wait_for(proc.wait(), 30)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n"), err.decode()


@pytest.fixture
async def relay(cluster):
    return await cluster.relay()


async def test_hosts_add_prints_json_off_a_terminal_and_list_show_rm_work(cluster, relay):
    code, out, err = await run(cluster, "hosts", "add", "web", "--server", relay.url)
    assert code == 0, err
    created = json.loads(out)
    assert set(created) == {"id", "slug", "name", "url", "token"}
    code, out, _ = await run(cluster, "hosts", "list", "--server", relay.url)
    assert code == 0 and [h["slug"] for h in json.loads(out)] == [created["slug"]]
    code, out, _ = await run(cluster, "hosts", "show", created["slug"], "--server", relay.url)
    assert code == 0 and json.loads(out)["id"] == created["id"]
    code, out, _ = await run(cluster, "hosts", "rm", created["id"], "--server", relay.url)
    assert code == 0 and json.loads(out) == {"deleted": created["id"]}


async def test_on_a_terminal_hosts_add_shows_the_token_and_the_agent_command(cluster, relay):
    code, out, err = await run(
        cluster, "hosts", "add", "web", "--slug", "termhost", "--server", relay.url, tty=True
    )
    assert code == 0, err
    token = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("token:"))
    assert token.startswith("rt_")
    assert f"agent --server {relay.url} --token {token} --to http://" in out
    code, out, _ = await run(
        cluster, "hosts", "add", "x", "--server", relay.url, "--json", tty=True
    )
    assert code == 0 and json.loads(out)["token"].startswith("rt_")  # --json wins on a terminal


async def test_on_a_terminal_lists_are_tables(cluster, relay):
    host = await relay.add_host("web", "tablehost")
    code, out, err = await run(cluster, "hosts", "list", "--server", relay.url, tty=True)
    assert code == 0, err
    header, row = out.splitlines()[:2]
    assert header.split() == ["SLUG", "NAME", "ONLINE", "MACHINE", "SINCE", "DNS"]
    assert row.split()[:3] == ["tablehost", "web", "no"]
    code, out, _ = await run(cluster, "machines", "--server", relay.url, tty=True)
    assert code == 0 and out.splitlines()[0].split() == [
        "ID", "ADDRESS", "STATE", "TUNNELS", "LAST", "SEEN",
    ]  # fmt: skip
    assert out.splitlines()[1].split()[:4] == [relay.machine_id, relay.url, "running", "0"]
    # A connection's events carry the host id only: the table names the host by slug.
    cluster.agent(relay, host["token"], f"http://127.0.0.1:{free_port()}")

    async def online() -> bool:
        return (await relay.host("tablehost"))["online"]

    await wait_until(online, what="agent connected")
    code, out, _ = await run(cluster, "events", "--server", relay.url, tty=True)
    assert code == 0 and out.splitlines()[0].split() == ["ID", "AT", "KIND", "HOST", "DETAILS"]
    assert any("host_registered" in line and "tablehost" in line for line in out.splitlines())
    assert any(" connected " in line and "tablehost" in line for line in out.splitlines()), out


async def test_machines_and_events_print_the_api_json(cluster, relay):
    host = await relay.add_host("web")
    code, out, err = await run(cluster, "machines", "--server", relay.url)
    assert code == 0, err
    (machine,) = json.loads(out)
    assert set(machine) == {"machine_id", "address", "state", "tunnels", "last_seen"}
    assert machine["machine_id"] == relay.machine_id
    code, out, _ = await run(cluster, "events", "--server", relay.url, "--limit", "1000")
    page = json.loads(out)
    registered = [e for e in page["events"] if e["kind"] == "host_registered"]
    assert [e["host_id"] for e in registered] == [host["id"]]
    code, out, _ = await run(cluster, "events", "--server", relay.url, "--after", page["next"])
    assert code == 0 and json.loads(out) == {"events": [], "next": page["next"]}


async def test_events_follow_prints_new_events_until_ctrl_c(cluster, relay):
    proc = await asyncio.create_subprocess_exec(
        RELAY, "events", "--follow", "--server", relay.url,
        env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        host = await relay.add_host("followed")

        async def seen() -> bool:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            event = json.loads(line)  # one JSON object per line off a terminal
            return event["kind"] == "host_registered" and event["host_id"] == host["id"]

        await wait_until(seen, timeout=15, what="the new host's event in the follow output")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_exit_1_when_the_api_refuses(cluster, relay):
    code, out, err = await run(cluster, "hosts", "show", "nosuchhost", "--server", relay.url)
    assert (code, out) == (1, "")
    assert "HTTP 404" in err and "host_not_found" in err
    code, _, err = await run(
        cluster, "hosts", "add", "x", "--slug", "Bad Slug!", "--server", relay.url
    )
    assert code == 1 and "HTTP 422" in err


@pytest.mark.parametrize(
    "args",
    [
        ["hosts", "frobnicate"],
        ["hosts", "list", "--bogus"],
        ["events", "--limit", "0"],
        ["serve", "--ping-interval", "-1"],
        ["serve", "--log-level", "verbose"],
        ["serve", "--route-mode", "sideways"],
    ],
)
async def test_exit_2_on_usage_errors(cluster, args):
    code, out, err = await run(cluster, *args)
    assert (code, out) == (2, "")
    assert "error" in err


async def test_exit_2_names_the_flag_and_the_rule(cluster):
    code, _, err = await run(cluster, "agent", "--token", "t", "--to", "http://127.0.0.1:1",
                             "--ping-interval", "-1")  # fmt: skip
    assert code == 2 and "--ping-interval: must be a number > 0 (seconds), got '-1'" in err
    code, _, err = await run(cluster, "serve", "--log-level", "verbose")
    assert code == 2 and "'debug', 'info', 'warning', 'error'" in err
    env = cluster.env(RELAY_TRUST_FLY_HEADERS="maybe")
    code, _, err = await run(cluster, "serve", env=env)
    assert code == 2 and "RELAY_TRUST_FLY_HEADERS must be true or false" in err


async def test_exit_3_when_the_admin_token_is_refused_says_where_it_came_from(
    cluster, relay, tmp_path
):
    env = cluster.env(RELAY_ADMIN_TOKEN="not-the-token")
    code, _, err = await run(cluster, "hosts", "list", "--server", relay.url, env=env)
    assert code == 3
    assert f"admin token refused by {relay.url}" in err and "RELAY_ADMIN_TOKEN" in err
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "admin-token").write_text("stale-token\n")
    env = {k: v for k, v in cluster.env().items() if k != "RELAY_ADMIN_TOKEN"}
    code, _, err = await run(
        cluster, "machines", "--server", relay.url, "--data-dir", str(tmp_path / "stale"), env=env
    )
    assert code == 3 and str(tmp_path / "stale" / "admin-token") in err


async def test_exit_4_when_nothing_listens(cluster):
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run(cluster, "hosts", "list", "--server", url)
    assert (code, out) == (4, "")
    assert f"cannot reach {url}" in err


@pytest.fixture
async def not_a_relay():
    """A plain aiohttp server on loopback: an HTML page, a foreign JSON error, odd JSON."""

    async def page(_request):
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def foreign_error(_request):
        return web.json_response({"detail": "Not Found"}, status=404)

    async def odd_json(_request):
        return web.json_response({"hosts": "none"})

    app = web.Application()
    app.router.add_get("/html/api/hosts", page)
    app.router.add_get("/foreign/api/hosts", foreign_error)
    app.router.add_get("/odd/api/hosts", odd_json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("html", "(HTTP 200, text/html)"),
        ("foreign", "(HTTP 404, application/json)"),
        ("odd", "unexpected answer to GET /api/hosts"),
    ],
)
async def test_exit_4_when_the_server_is_not_a_relay(cluster, not_a_relay, path, said):
    url = f"{not_a_relay}/{path}"
    code, out, err = await run(cluster, "hosts", "list", "--server", url)
    assert (code, out) == (4, "")
    assert f"{url} does not look like a relay" in err and said in err
