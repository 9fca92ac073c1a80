"""Configuration validation and the edge's reading of fly-replay answers."""

from __future__ import annotations

import pytest

from relay.cli.main import main
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
