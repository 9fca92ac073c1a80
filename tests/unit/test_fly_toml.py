"""fly.toml agrees with the relay's own options (a typo there only shows on Fly)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from relay.config import ServeConfig, parse_hostport

FLY = tomllib.loads((Path(__file__).resolve().parents[2] / "fly.toml").read_text())
ENV: dict[str, str] = FLY["env"]


def seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_every_env_option_is_a_relay_option_with_a_valid_value():
    fields = {f.name for f in msgspec.structs.fields(ServeConfig)}
    values = {}
    for name, value in ENV.items():
        assert name.startswith("RELAY_"), name
        field = name.removeprefix("RELAY_").lower()
        assert field in fields, f"{name} is not an option of relay serve"
        values[field] = value
    cfg = msgspec.convert(values, ServeConfig, strict=False).resolved()
    assert cfg.host_port == ("::", FLY["http_service"]["internal_port"])  # dual stack


def test_metrics_section_scrapes_the_metrics_listener():
    _, port = parse_hostport(ENV["RELAY_METRICS_LISTEN"])
    assert FLY["metrics"] == {"port": port, "path": "/metrics"}


def test_a_drain_is_never_cut_short():
    assert FLY["kill_signal"] == "SIGTERM"
    assert seconds(FLY["kill_timeout"]) > float(ENV["RELAY_DRAIN_TIMEOUT"]) + 5
    checks = FLY["http_service"]["checks"]
    assert [c["path"] for c in checks] == ["/readyz"]
    assert FLY["deploy"]["strategy"] in {"rolling", "bluegreen"}
