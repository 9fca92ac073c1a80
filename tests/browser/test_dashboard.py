"""The operator dashboard (/ui) in a real browser against real `relay serve` and agents.

Every test signs in through the page and watches it change as real processes do things:
agents connect and go, hosts are added and removed from the page and from the API, a
DNS dry run is previewed and then applied.
"""

from __future__ import annotations

import re
import signal
import time

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from relay import __version__
from tests.e2e.harness import ADMIN_TOKEN, free_port

pytestmark = pytest.mark.e2e

# The hosts table, as the page heads it (checked in the first test).
COLUMNS = [
    "Name",
    "URL",
    "Status",
    "Since",
    "Disconnect reason",
    "Machine",
    "Epoch",
    "Agent",
    "DNS",
    "Actions",
]

MANAGED_DNS = (
    "--dns-mode",
    "managed",
    "--dns-provider",
    "memory",
    "--dns-target",
    "relay.example.net",
)


def sign_in(page: Page, relay, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{relay.url}/ui")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def api(relay, method: str, path: str) -> httpx.Response:
    """One admin API call from this (sync) test."""
    with httpx.Client(base_url=relay.url, timeout=5) as client:
        return client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def host_row(page: Page, slug: str) -> Locator:
    return page.locator("#hosts tbody tr", has_text=slug)


def cell(row: Locator, column: str) -> Locator:
    return row.locator("td").nth(COLUMNS.index(column))


def test_sign_in_refuses_a_wrong_token_and_keeps_the_right_one_for_the_tab(
    page: Page, cluster, run
):
    relay = run(cluster.relay())
    response = page.goto(f"{relay.url}/ui")
    assert response is not None
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"

    page.get_by_label("Admin token").fill("not-the-admin-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The relay refused this token.")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_label("Admin token").press("Enter")  # the keyboard signs in too
    expect(page.get_by_role("heading", name="Hosts")).to_be_visible()
    headers = page.locator("#hosts thead th").all_inner_texts()
    assert [h.strip() for h in headers[:-1]] == COLUMNS[:-1]
    expect(page.locator("#machines tbody tr")).to_have_count(1)
    expect(page.locator("#machines tbody tr")).to_contain_text(relay.machine_id)
    expect(page.get_by_text("wildcard mode")).to_be_visible()  # this relay has no DNS

    # The token is kept for the tab: a reload stays signed in.
    page.reload()
    expect(page.get_by_role("heading", name="Hosts")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in")).to_be_hidden()

    # A token the relay stops accepting (rotated) sends the page back to the form.
    page.evaluate("sessionStorage.setItem('relay-admin-token', 'rotated-away')")
    expect(page.get_by_role("alert")).to_have_text(
        "The relay refused the admin token. Sign in again."
    )
    expect(page.locator("#dashboard")).to_be_hidden()

    sign_in(page, relay)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0

    # The files are what was shipped, revalidated by ETag; nothing else is under /ui.
    with httpx.Client(base_url=relay.url, timeout=5) as client:
        script = client.get("/ui/dashboard.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        again = client.get("/ui/dashboard.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        missing = client.get("/ui/secrets.txt")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


def test_host_list_follows_an_agent_connecting_and_leaving(page: Page, cluster, run):
    relay = run(cluster.relay())
    host = run(relay.add_host("laptop"))
    sign_in(page, relay)
    row = host_row(page, host["slug"])
    expect(cell(row, "Status")).to_have_text("offline")
    expect(cell(row, "Since")).to_have_text("never connected")

    agent = cluster.agent(relay, host["token"], f"http://127.0.0.1:{free_port()}")
    expect(cell(row, "Status")).to_have_text("online")
    expect(cell(row, "Machine")).to_have_text(relay.machine_id)
    expect(cell(row, "Epoch")).to_have_text("1")
    expect(cell(row, "Agent")).to_have_text(__version__)
    expect(cell(row, "Since")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    expect(page.locator("#machines tbody tr")).to_contain_text(relay.machine_id)

    agent.signal(signal.SIGTERM)
    expect(cell(row, "Status")).to_have_text("offline")
    expect(cell(row, "Disconnect reason")).to_have_text("closed")
    expect(cell(row, "Machine")).to_have_text(relay.machine_id)  # where it was last


def test_creating_a_host_shows_its_token_once_and_the_token_works(page: Page, cluster, run):
    relay = run(cluster.relay())
    sign_in(page, relay)
    # Names are shown as text: markup in one stays inert.
    name = '<img id="pwned" src="/x" onerror="document.title=1">'
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create host").click()

    notice = page.locator("#created")
    expect(notice).to_be_visible()
    expect(notice).to_be_focused()
    token = page.locator("#created-token").inner_text()
    assert len(token) >= 32
    (created,) = api(relay, "GET", "/api/hosts").json()
    slug = created["slug"]
    expect(page.locator("#created-url")).to_have_text(created["url"])
    expect(page.locator("#created-command")).to_contain_text(f"--token {token}")
    row = host_row(page, slug)
    expect(cell(row, "Name")).to_contain_text(name)
    assert page.locator("#pwned").count() == 0

    # The token shown is the host's: an agent with it brings the host online.
    cluster.agent(relay, token, f"http://127.0.0.1:{free_port()}")
    expect(cell(row, "Status")).to_have_text("online")

    page.get_by_role("button", name="Done").click()
    expect(notice).to_be_hidden()
    expect(page.get_by_label("Name")).to_be_focused()
    assert token not in page.content()
    page.reload()
    expect(row).to_be_visible()
    assert token not in page.content()

    # A taken slug is refused with the relay's own words.
    page.get_by_label("Name").fill("again")
    page.get_by_label("Slug").fill(slug)
    page.get_by_role("button", name="Create host").click()
    expect(page.get_by_role("status")).to_contain_text("Could not create the host")
    expect(page.get_by_role("status")).to_contain_text(slug)
    expect(notice).to_be_hidden()


def test_removing_a_host_asks_first(page: Page, cluster, run):
    relay = run(cluster.relay())
    keep = run(relay.add_host("keep"))
    doomed = run(relay.add_host("doomed"))
    sign_in(page, relay)
    remove = page.get_by_role("button", name=f"Remove host doomed ({doomed['slug']})")

    page.once("dialog", lambda dialog: dialog.dismiss())
    remove.click()
    expect(host_row(page, doomed["slug"])).to_be_visible()
    assert run(relay.host(doomed["id"]))["slug"] == doomed["slug"]

    page.once("dialog", lambda dialog: dialog.accept())
    remove.click()
    expect(host_row(page, doomed["slug"])).to_have_count(0)
    expect(page.get_by_role("status")).to_have_text(f"Removed host doomed ({doomed['slug']}).")
    expect(host_row(page, keep["slug"])).to_be_visible()
    assert api(relay, "GET", f"/api/hosts/{doomed['id']}").status_code == 404


def test_dns_dry_run_shows_the_plan_and_changes_nothing(page: Page, cluster, run):
    # Records of a host offline for over a second are orphans; only a sync removes them
    # here (the sweep and the scheduled sync are far away).
    relay = run(
        cluster.relay(
            *MANAGED_DNS,
            "--dns-offline-grace",
            "1",
            "--dns-orphan-grace",
            "0",
            "--reconcile-interval",
            "300",
        )
    )
    host = run(relay.add_host("dnshost"))
    fqdn = f"{host['slug']}.localhost"
    record = f"{fqdn} CNAME relay.example.net"
    agent = cluster.agent(relay, host["token"], f"http://127.0.0.1:{free_port()}")
    sign_in(page, relay)
    row = host_row(page, host["slug"])
    expect(cell(row, "Status")).to_have_text("online")
    expect(cell(row, "DNS")).to_contain_text(record)
    records = page.locator("#dns-records tbody tr", has_text=fqdn)
    page.get_by_role("button", name="Reload records").click()
    expect(records).to_have_count(1)

    agent.signal(signal.SIGTERM)
    expect(cell(row, "Status")).to_have_text("offline")

    # Once the grace has passed, the plan deletes the record; wait for that, previewing.
    changes = page.locator("#dns-changes")
    deadline = time.monotonic() + 10
    while True:
        page.get_by_role("button", name="Preview sync (dry run)").click()
        try:
            expect(changes).to_contain_text(f"delete {record}", timeout=500)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    report = page.locator("#dns-report")
    expect(report).to_contain_text("Dry run: what a sync would do (nothing was changed)")
    expect(report).to_contain_text("Would delete1")
    page.get_by_role("button", name="Reload records").click()
    expect(records).to_have_count(1)
    assert fqdn in [r["name"] for r in api(relay, "GET", "/api/dns/records").json()["records"]]

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Sync now").click()
    expect(report).to_contain_text("Sync done")
    expect(report).to_contain_text("Deleted1")
    expect(records).to_have_count(0)
    assert fqdn not in [r["name"] for r in api(relay, "GET", "/api/dns/records").json()["records"]]


def test_events_appear_live(page: Page, cluster, run):
    relay = run(cluster.relay())
    sign_in(page, relay)
    events = page.locator("#events li")
    expect(events.filter(has_text="machine_started")).to_contain_text(
        f"machine_id={relay.machine_id}"
    )

    host = run(relay.add_host("newcomer"))
    newest = events.first
    expect(newest).to_contain_text("host_registered")
    expect(newest).to_contain_text(f"slug={host['slug']}")

    assert api(relay, "DELETE", f"/api/hosts/{host['id']}").status_code == 204
    expect(newest).to_contain_text("host_removed")
    expect(events.filter(has_text="host_registered")).to_have_count(1)  # not shown twice
