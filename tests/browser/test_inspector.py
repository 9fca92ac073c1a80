"""The agent's inspector (`relay agent --inspect`) in a real browser.

A real relay and agent carry a request to a local service; the page lists it, shows its
headers and body, and its Replay button sends it again to the service and shows the
service's new answer.
"""

from __future__ import annotations

import json

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.harness import free_port
from tests.e2e.upstream import Upstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream(run):
    service = run(Upstream().start())
    yield service
    run(service.stop())


def test_inspector_shows_a_request_and_replays_it(page: Page, cluster, run, upstream):
    relay = run(cluster.relay())
    host = run(relay.add_host("inspected"))
    port = free_port()
    inspector = f"http://127.0.0.1:{port}"
    cluster.agent(relay, host["token"], upstream.url, "--inspect", f"127.0.0.1:{port}")
    run(relay.wait_online(host["slug"]))

    page.goto(inspector + "/")
    expect(page).to_have_title("relay agent · inspector")
    # wait_online's probe went through the tunnel already: it is listed.
    expect(page.locator("#rows tr", has_text="/__relay_probe__")).to_have_count(1)

    with httpx.Client(base_url=relay.url, timeout=10) as client:
        first = client.post(
            "/count?from=browser",
            content=b"hello inspector",
            headers={"Host": f"{host['slug']}.localhost:{relay.port}", "X-Probe": "from-test"},
        )
    assert first.json() == {"count": 1, "body": "hello inspector"}

    row = page.locator("#rows tr", has_text="/count?from=browser")
    expect(row).to_have_count(1)  # the page polls the agent and lists the request
    expect(row).to_contain_text("POST")
    expect(row).to_contain_text("200")
    row.click()
    expect(page.locator("#title")).to_have_text("POST /count?from=browser")
    expect(page.locator("#request-body")).to_have_text("hello inspector")
    expect(page.get_by_text("X-Probe: from-test")).to_be_visible()
    expect(page.locator("#response-body")).to_contain_text('"count": 1')

    page.get_by_role("button", name="Replay").click()
    expect(page.locator("#replay-status")).to_have_text("200")
    replayed = page.locator("#replay-body")
    expect(replayed).to_contain_text('"count": 2')
    assert json.loads(replayed.inner_text()) == {"count": 2, "body": "hello inspector"}
    assert upstream.state.counted == 2  # the replay reached the service itself
