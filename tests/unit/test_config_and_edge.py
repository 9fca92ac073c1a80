"""Configuration validation and the edge's reading of fly-replay answers."""

from __future__ import annotations

import pytest

from relay.cli.main import _build, _parser, main
from relay.config import AgentConfig, ServeConfig, parse_hostport
from relay.edge import parse_machines, replay_target
from relay.errors import ConfigError


@pytest.mark.parametrize("bad", ["8080", "host:", "host:99999", "host:http"])
def test_listen_address_must_be_host_port(bad):
    with pytest.raises(ConfigError):
        parse_hostport(bad)


def test_ipv6_listen_address():
    assert parse_hostport("[::1]:8080") == ("::1", 8080)


def test_defaults_resolve_to_a_machine_id_and_a_loopback_advertise_address():
    cfg = ServeConfig(listen="0.0.0.0:9000").resolved()
    assert cfg.machine_id.startswith("m-")
    assert cfg.advertise == "http://127.0.0.1:9000"
    assert cfg.owner_ttl_ms == 30_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_domain": ".."},
        {"redis_url": "http://x"},
        {"advertise": "ftp://x"},
        {"listen": "nope"},
    ],
)
def test_invalid_serve_settings_are_refused_with_a_clear_error(kwargs):
    with pytest.raises(ConfigError):
        ServeConfig(**kwargs).resolved()


def test_agent_needs_a_token_and_a_target():
    with pytest.raises(ConfigError, match="--token"):
        AgentConfig(to="http://127.0.0.1:1").resolved()
    with pytest.raises(ConfigError, match="--to"):
        AgentConfig(token="t").resolved()
    assert (
        AgentConfig(server="https://r.example", token="t", to="http://127.0.0.1:1").tunnel_url
        == "wss://r.example/tunnel"
    )


def test_cli_rejects_bad_values_with_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("RELAY_TOKEN", raising=False)
    assert (
        main(["agent", "--token", "t", "--to", "http://127.0.0.1:1", "--ping-interval", "-1"]) == 2
    )
    assert "--ping-interval: must be a number > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("headers", "target"),
    [
        ({"fly-replay": "instance=m2"}, "m2"),
        ({"Fly-Replay": "region=ams;instance=abc_1"}, "abc_1"),
        ({"fly-replay": "region=ams"}, None),
        ({}, None),
    ],
)
def test_replay_target_reads_the_instance(headers, target):
    assert replay_target(headers) == target


def test_edge_machines_must_be_id_equals_url():
    assert parse_machines(["a=http://127.0.0.1:1/"]) == {"a": "http://127.0.0.1:1"}
    for bad in (["a"], ["=http://x"], ["a=x"], []):
        with pytest.raises(ConfigError):
            parse_machines(bad)


def test_store_options_come_from_flags_and_the_environment(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    args = _parser().parse_args(
        ["serve", "--redis-url", "rediss://n1:6379", "--redis-cluster", "--redis-ca", str(ca)]
    )
    cfg = _build(ServeConfig, args).resolved()
    assert (cfg.redis_cluster, cfg.redis_ca) == (True, str(ca))
    monkeypatch.setenv("RELAY_REDIS_CLUSTER", "true")
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://n1:6379")
    assert _build(ServeConfig, _parser().parse_args(["serve"])).redis_cluster is True
    off = _parser().parse_args(["serve", "--no-redis-cluster"])  # the flag beats the variable
    assert _build(ServeConfig, off).redis_cluster is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"redis_cluster": True}, "--redis-cluster needs --redis-url"),
        ({"redis_cluster": True, "redis_url": "unix:///v.sock"}, "--redis-cluster needs"),
        ({"redis_ca": "ca.pem"}, "needs a rediss://"),
        ({"redis_ca": "ca.pem", "redis_url": "redis://h:1"}, "needs a rediss://"),
        ({"redis_ca": "/nonexistent/ca.pem", "redis_url": "rediss://h:1"}, "no such file"),
    ],
)
def test_store_options_need_a_store_they_apply_to(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ServeConfig(**kwargs).resolved()
