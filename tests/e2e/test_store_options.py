"""End-to-end: `relay serve` against a TLS store (--redis-ca) and the store options' errors.

The wheel's Valkey has no TLS, so the store is reached through a TLS front in the test
process (tests.tls): the relay's side of rediss:// (handshake, verification) is real.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from tests.e2e.harness import RELAY, Proc, free_port, wait_until
from tests.tls import TlsFront, make_certs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_store(certs, valkey_url):
    front = await TlsFront(certs, unquote(urlsplit(valkey_url).path)).start()
    yield front
    await front.stop()


async def test_a_rediss_store_verified_with_redis_ca_serves(cluster, upstream, tls_store, certs):
    relay = await cluster.relay("--redis-url", tls_store.url, "--redis-ca", str(certs.ca))
    host = await relay.add_host("tls")
    cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    async with relay.client(host["slug"]) as c:
        assert (await c.get("/hello")).status_code == 200


def _serve(cluster, tmp_path, *args: str) -> Proc:
    argv = [RELAY, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)]
    proc = Proc("relay", [*argv, *args], cluster.env(), tmp_path / "relay.log").start()
    cluster.procs.append(proc)
    return proc


async def test_a_store_signed_by_another_ca_stops_the_relay_naming_the_store(
    cluster, tmp_path, tls_store, certs
):
    url = tls_store.url.replace("rediss://", "rediss://:hunter2@")
    proc = _serve(cluster, tmp_path, "--redis-url", url, "--redis-ca", str(certs.other_ca))
    assert await proc.wait_exit(20) == 1
    out = proc.log()
    assert f"rediss://:***@127.0.0.1:{tls_store.port}/0" in out, out
    assert "certificate verify failed" in out, out
    assert "hunter2" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis-url", "rediss://127.0.0.1:1", "--redis-ca", "/nonexistent/ca.pem"], "no such"),
        (["--redis-url", "redis://127.0.0.1:1", "--redis-ca", __file__], "needs a rediss://"),
        (["--redis-cluster"], "--redis-cluster needs --redis-url"),
    ],
    ids=["missing-ca", "ca-without-tls", "cluster-without-url"],
)
async def test_store_options_without_what_they_need_are_usage_errors(
    cluster, tmp_path, args, message
):
    proc = _serve(cluster, tmp_path, *args)
    assert await proc.wait_exit(10) == 2
    await wait_until(lambda: message in proc.log(), what=message)
