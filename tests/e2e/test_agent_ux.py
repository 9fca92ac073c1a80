"""End-to-end: what `relay agent` shows (terminal, JSON lines), --config, --inspect."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess

import aiohttp
import httpx
import pytest

from tests.e2e.harness import RELAY, Proc, free_port, wait_until
from tests.e2e.upstream import Upstream, pattern_bytes

pytestmark = pytest.mark.e2e

FAST = ["--ping-interval", "0.5", "--silence-timeout", "2", "--max-backoff", "0.5"]


def json_lines(proc: Proc, event: str) -> list[dict]:
    found = []
    for line in proc.log().splitlines():
        if f'"{event}"' in line:
            found.append(json.loads(line))
    return [entry for entry in found if entry.get("event") == event]


async def test_connect_line_carries_the_public_url_and_each_request_a_json_line(cluster, upstream):
    relay = await cluster.relay()
    host = await relay.add_host("site")
    agent = cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    (connected,) = await wait_until(lambda: json_lines(agent, "agent.connected"), what="connect")
    assert connected["url"] == host["url"]
    async with relay.client(host["slug"]) as c:
        r = await c.get("/download?size=5000")
    assert r.status_code == 200
    lines = await wait_until(
        lambda: [x for x in json_lines(agent, "agent.request") if x["path"].startswith("/down")],
        what="agent.request line",
    )
    (line,) = lines
    assert line["method"] == "GET"
    assert line["path"] == "/download?size=5000"
    assert line["status"] == 200
    assert line["bytes"] == 5000
    assert 0 < line["duration_ms"] < 10_000
    assert line["slug"] == host["slug"]
    assert line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


async def test_quiet_agent_writes_no_request_lines(cluster, upstream):
    relay = await cluster.relay()
    host = await relay.add_host("site")
    agent = cluster.agent(relay, host["token"], upstream.url, "--quiet")
    await relay.wait_online(host["slug"])
    async with relay.client(host["slug"]) as c:
        for _ in range(3):
            assert (await c.get("/hello")).status_code == 200
    # The probe and three requests were answered; the connect line is there, no request line.
    assert json_lines(agent, "agent.connected")
    assert json_lines(agent, "agent.request") == []


async def test_terminal_shows_a_status_block_and_request_lines(cluster, upstream, tmp_path):
    relay = await cluster.relay()
    host = await relay.add_host("site")
    master, slave = pty.openpty()
    env = cluster.env()
    env.pop("RELAY_LOG_FORMAT")
    argv = [RELAY, "agent", "--server", relay.url, "--token", host["token"]]
    argv += ["--to", upstream.url, "--name", "web", *FAST]
    popen = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    screen = bytearray()

    def read() -> str:
        with contextlib.suppress(BlockingIOError, OSError):
            os.set_blocking(master, False)
            while chunk := os.read(master, 65536):
                screen.extend(chunk)
        return screen.decode(errors="replace")

    try:
        await wait_until(lambda: "online" in read(), timeout=15, what=f"online block\n{read()}")
        text = read()
        assert host["url"] in text
        assert f"web ({host['slug']})" in text
        assert upstream.url in text
        assert relay.machine_id in text
        async with relay.client(host["slug"]) as c:
            assert (await c.get("/download?size=3000")).status_code == 200
        line = await wait_until(
            lambda: next((x for x in read().splitlines() if "/download" in x), None),
            what=f"request line\n{read()}",
        )
        assert re.search(r"\d\d:\d\d:\d\d  GET +/download\?size=3000 +.*200.* ms +2\.9 KB", line)
        assert '"event"' not in read()  # no JSON on a terminal
        popen.send_signal(signal.SIGINT)
        await wait_until(lambda: popen.poll() is not None, what="agent exit")
        assert popen.returncode == 0
        assert "stopped" in read()
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        os.close(master)


def config_agent(cluster, path, *args: str, name: str = "agent") -> Proc:
    argv = [RELAY, "agent", "--config", str(path), *args]
    proc = Proc(name, argv, cluster.env(), cluster.tmp / f"{name}-{len(cluster.procs)}.log")
    cluster.procs.append(proc.start())
    return proc


async def test_config_file_runs_several_tunnels_and_a_refused_one_stops_alone(
    cluster, upstream, tmp_path
):
    other = await Upstream().start()
    try:
        relay = await cluster.relay()
        a = await relay.add_host("a")
        b = await relay.add_host("b")
        path = tmp_path / "agent.toml"
        path.write_text(
            f'server = "{relay.url}"\nping_interval = 0.5\nsilence_timeout = 2\n'
            f"max_backoff = 0.5\n\n"
            f'[[tunnel]]\nname = "one"\ntoken = "{a["token"]}"\nto = "{upstream.url}"\n\n'
            f'[[tunnel]]\nname = "two"\ntoken = "{b["token"]}"\nto = "{other.url}"\n\n'
            f'[[tunnel]]\nname = "bogus"\ntoken = "not-a-token"\nto = "{upstream.url}"\n'
        )
        agent = config_agent(cluster, path)
        await relay.wait_online(a["slug"])
        await relay.wait_online(b["slug"])
        (refused,) = await wait_until(
            lambda: json_lines(agent, "agent.unauthorized"), what="the bogus tunnel refused"
        )
        assert refused["tunnel"] == "bogus"
        # Each tunnel reaches its own service, and both live on after the refusal.
        async with relay.client(a["slug"]) as c:
            assert (await c.get("/count")).json()["count"] == 1
        async with relay.client(b["slug"]) as c:
            assert (await c.get("/count")).json()["count"] == 1
        assert upstream.state.counted == other.state.counted == 1
        assert agent.returncode() is None
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 3  # the worst tunnel's status: a refused token
        named = {x["tunnel"] for x in json_lines(agent, "agent.request")}
        assert {"one", "two"} <= named
    finally:
        await other.stop()


async def test_config_file_whose_tunnels_all_end_exits(cluster, tmp_path):
    relay = await cluster.relay()
    path = tmp_path / "agent.toml"
    path.write_text(
        f'server = "{relay.url}"\n[[tunnel]]\ntoken = "x"\nto = "http://127.0.0.1:9"\n'
        '[[tunnel]]\ntoken = "y"\nto = "http://127.0.0.1:9"\n'
    )
    agent = config_agent(cluster, path)
    assert await agent.wait_exit() == 3
    assert len(json_lines(agent, "agent.unauthorized")) == 2


@pytest.fixture
async def inspected(cluster, upstream):
    relay = await cluster.relay()
    host = await relay.add_host("site")
    port = free_port()
    agent = cluster.agent(relay, host["token"], upstream.url, "--inspect", f"127.0.0.1:{port}")
    await relay.wait_online(host["slug"])
    inspector = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        async with httpx.AsyncClient(timeout=1) as c:
            return (await c.get(f"{inspector}/api/requests")).status_code == 200

    await wait_until(up, what="inspector up")
    return relay, host, agent, inspector


async def find_request(inspector: str, path: str) -> dict:
    async def listed() -> dict | None:
        async with httpx.AsyncClient(timeout=5) as c:
            rows = (await c.get(f"{inspector}/api/requests")).json()["requests"]
        return next((r for r in rows if r["path"] == path and r["finished"]), None)

    row = await wait_until(listed, what=f"{path} in the inspector")
    async with httpx.AsyncClient(timeout=5) as c:
        return (await c.get(f"{inspector}/api/requests/{row['id']}")).json()


async def test_inspector_lists_requests_with_headers_and_bodies(inspected):
    relay, host, _agent, inspector = inspected
    async with relay.client(host["slug"]) as c:
        r = await c.post("/echo", content=b"ping body", headers={"X-Probe": "seen"})
    assert r.content == b"ping body"
    detail = await find_request(inspector, "/echo")
    assert detail["method"] == "POST"
    assert detail["status"] == 200
    assert ["X-Probe", "seen"] in detail["request_headers"]
    assert detail["request_body"] == {
        "encoding": "utf-8",
        "data": "ping body",
        "size": 9,
        "truncated": False,
    }
    assert detail["response_body"]["data"] == "ping body"
    assert any(k.lower() == "transfer-encoding" for k, _ in detail["response_headers"])


async def test_inspector_truncates_and_flags_large_bodies(inspected):
    relay, host, _agent, inspector = inspected
    big = pattern_bytes(200_000)
    async with relay.client(host["slug"]) as c:
        r = await c.post("/echo", content=big)
        assert r.content == big  # the client gets it all; the inspector keeps 64 KiB
        d = await c.get("/download?size=100000")
        assert len(d.content) == 100_000
    sent = await find_request(inspector, "/echo")
    assert sent["request_body"]["truncated"] is True
    assert sent["request_body"]["size"] == 64 * 1024
    assert sent["request_body"]["encoding"] == "base64"
    assert sent["response_body"]["truncated"] is True
    assert sent["bytes"] == 200_000
    got = await find_request(inspector, "/download?size=100000")
    assert got["request_body"]["truncated"] is False
    assert got["response_body"]["truncated"] is True
    assert got["response_body"]["size"] == 64 * 1024
    async with httpx.AsyncClient(timeout=5) as c:
        refused = await c.post(f"{inspector}/api/requests/{sent['id']}/replay")
    assert refused.status_code == 409  # a cut body cannot be sent again faithfully


async def test_replay_goes_to_the_local_service_and_returns_its_fresh_answer(inspected, upstream):
    relay, host, _agent, inspector = inspected
    async with relay.client(host["slug"]) as c:
        r = await c.post("/count?x=1", content=b"again")
    assert r.json() == {"count": 1, "body": "again"}
    detail = await find_request(inspector, "/count?x=1")
    async with httpx.AsyncClient(timeout=10) as c:
        replay = await c.post(f"{inspector}/api/requests/{detail['id']}/replay")
    assert replay.status_code == 200, replay.text
    answer = replay.json()
    assert answer["status"] == 200
    assert json.loads(answer["body"]["data"]) == {"count": 2, "body": "again"}
    assert upstream.state.counted == 2
    # The replay went straight to the service: the relay saw one request for the host.
    async with httpx.AsyncClient(timeout=5) as c:
        rows = (await c.get(f"{inspector}/api/requests")).json()["requests"]
    assert [row["path"] for row in rows].count("/count?x=1") == 1


async def test_websockets_are_listed_and_not_replayed(inspected):
    relay, host, agent, inspector = inspected
    headers = {"Host": f"{host['slug']}.localhost:{relay.port}"}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{relay.url}/ws", headers=headers) as ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=5)).data == "echo:hi"
    detail = await find_request(inspector, "/ws")
    assert (detail["status"], detail["websocket"], detail["error"]) == (101, True, "")
    async with httpx.AsyncClient(timeout=5) as c:
        refused = await c.post(f"{inspector}/api/requests/{detail['id']}/replay")
    assert refused.status_code == 409
    lines = await wait_until(
        lambda: [x for x in json_lines(agent, "agent.request") if x["path"] == "/ws"],
        what="the WebSocket's request line",
    )
    assert lines[0]["status"] == 101


async def test_inspector_is_not_reachable_through_the_tunnel(inspected):
    relay, host, _agent, _inspector = inspected
    async with relay.client(host["slug"]) as c:
        r = await c.get("/api/requests")
        page = await c.get("/")
    assert r.status_code == 404  # the upstream's answer: it has no such route
    assert "requests" not in r.text
    assert page.text == "hello from upstream"


async def test_inspector_refuses_foreign_hosts_and_cross_site_posts(inspected):
    relay, host, _agent, inspector = inspected
    async with relay.client(host["slug"]) as c:
        await c.get("/count")
    detail = await find_request(inspector, "/count")
    port = inspector.rsplit(":", 1)[1]
    async with httpx.AsyncClient(timeout=5) as c:
        rebound = await c.get(f"{inspector}/api/requests", headers={"Host": f"evil.test:{port}"})
        assert rebound.status_code == 403
        assert rebound.json()["error"]["code"] == "forbidden_host"
        wrong_port = await c.get(f"{inspector}/", headers={"Host": "127.0.0.1:1"})
        assert wrong_port.status_code == 403
        ok = await c.get(f"{inspector}/", headers={"Host": f"localhost:{port}"})
        assert ok.status_code == 200
        assert "<title>relay agent · inspector</title>" in ok.text
        cross = await c.post(
            f"{inspector}/api/requests/{detail['id']}/replay",
            headers={"Origin": "https://evil.test"},
        )
        assert cross.status_code == 403
        same = await c.post(
            f"{inspector}/api/requests/{detail['id']}/replay",
            headers={"Origin": f"http://127.0.0.1:{port}"},
        )
        assert same.status_code == 200


async def test_inspect_on_a_public_address_is_refused(cluster, upstream):
    relay = await cluster.relay()
    agent = cluster.agent(relay, "t", upstream.url, "--inspect", f"0.0.0.0:{free_port()}")
    assert await agent.wait_exit() == 2
    assert "loopback only" in agent.log()
