"""The `relay` command line: options made from the config structs, help, output, stopping."""

from __future__ import annotations

import asyncio
import importlib.metadata
import signal
from datetime import UTC, datetime

import msgspec
import pytest

from relay.cli.main import _HELP, _build, _parser, main
from relay.cli.options import env_value, options_of, parse_bool
from relay.cli.output import age, render_fields, render_table
from relay.config import AgentConfig, ServeConfig
from relay.errors import ConfigError
from relay.server.stopping import EXIT_STOPPED_AT_ONCE, StopSignals, drain_notice


@pytest.mark.parametrize("struct", [ServeConfig, AgentConfig])
def test_every_option_has_a_help_text(struct):
    missing = [f.name for f in msgspec.structs.fields(struct) if f.name not in _HELP]
    assert not missing, f"add a help text to relay/cli/main.py _HELP for {missing}"


def test_help_texts_name_no_field_that_does_not_exist():
    fields = {f.name for s in (ServeConfig, AgentConfig) for f in msgspec.structs.fields(s)}
    assert set(_HELP) <= fields


def test_version_comes_from_the_installed_package(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"relay {importlib.metadata.version('relay-directory')}\n"


def test_help_shows_unit_default_choices_and_variable(capsys):
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ping-interval SECONDS seconds between pings" in text
    assert "(default 10) [env RELAY_PING_INTERVAL]" in text
    assert "--max-body BYTES largest request body accepted, 0 = unlimited (default 0)" in text
    assert "--route-mode {fly-replay,forward}" in text
    assert "--log-level {debug,info,warning,error}" in text
    assert "--trust-fly-headers, --no-trust-fly-headers" in text
    assert "--max-frame BYTES" in text and "(default 1048576 = 1 MiB)" in text


def test_the_exit_statuses_are_in_the_main_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("0    ok", "1    refused", "2    usage", "3    admin token refused", "4    relay"):
        assert line in out


def test_bool_options_are_switches_and_their_variables_take_true_false(monkeypatch):
    monkeypatch.delenv("RELAY_TRUST_FLY_HEADERS", raising=False)
    assert _build(ServeConfig, _parser().parse_args(["serve"])).trust_fly_headers is False
    args = _parser().parse_args(["serve", "--trust-fly-headers"])
    assert _build(ServeConfig, args).trust_fly_headers is True
    for raw, value in (("yes", True), ("0", False), ("TRUE", True), ("no", False)):
        monkeypatch.setenv("RELAY_TRUST_FLY_HEADERS", raw)
        assert _build(ServeConfig, _parser().parse_args(["serve"])).trust_fly_headers is value
    args = _parser().parse_args(["serve", "--no-trust-fly-headers"])
    assert _build(ServeConfig, args).trust_fly_headers is False  # the flag wins over the variable


@pytest.mark.parametrize("raw", ["maybe", "", "2", "truthy"])
def test_other_bool_values_are_refused_naming_the_source(raw):
    with pytest.raises(ConfigError, match="RELAY_X must be true or false"):
        parse_bool(raw, "RELAY_X")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--ping-interval", "-1"], "argument --ping-interval: must be a number > 0 (seconds)"),
        (["--ping-misses", "0"], "argument --ping-misses: must be an integer >= 1, got '0'"),
        (["--max-body", "-5"], "argument --max-body: must be an integer >= 0 (bytes)"),
        (["--max-frame", "10"], "argument --max-frame: must be an integer >= 16384 (bytes)"),
        (["--drain-timeout", "soon"], "argument --drain-timeout: must be a number > 0"),
        (["--log-level", "verbose"], "argument --log-level: invalid choice: 'verbose'"),
    ],
)
def test_bad_values_exit_2_naming_the_flag_and_the_rule(capsys, argv, said):
    assert main(["serve", *argv]) == 2
    assert said in capsys.readouterr().err


def test_bad_variables_exit_2_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("RELAY_PING_INTERVAL", "-1")
    assert main(["agent", "--token", "t", "--to", "http://127.0.0.1:1"]) == 2
    assert "RELAY_PING_INTERVAL must be a number > 0 (seconds), got '-1'" in capsys.readouterr().err
    monkeypatch.delenv("RELAY_PING_INTERVAL")
    monkeypatch.setenv("RELAY_ROUTE_MODE", "sideways")
    with pytest.raises(ConfigError, match="RELAY_ROUTE_MODE must be one of fly-replay, forward"):
        _build(ServeConfig, _parser().parse_args(["serve"]))


def test_platform_variables_are_read_under_their_own_names():
    options = {o.name: o for o in options_of(ServeConfig)}
    env = {"REDIS_URL": "redis://r:6379", "FLY_MACHINE_ID": "abc", "FLY_PRIVATE_IP": "fdaa::3"}
    assert env_value(options["redis_url"], env) == ("REDIS_URL", "redis://r:6379")
    assert env_value(options["machine_id"], env) == ("FLY_MACHINE_ID", "abc")
    assert env_value(options["advertise"], env) == ("FLY_PRIVATE_IP", "http://[fdaa::3]:8080")
    # The port is the listener's, given as a flag (listen=) or as RELAY_LISTEN.
    assert env_value(options["advertise"], env, listen="[::]:9000") == (
        "FLY_PRIVATE_IP",
        "http://[fdaa::3]:9000",
    )
    with_listen = {**env, "RELAY_LISTEN": "[::]:7000"}
    assert env_value(options["advertise"], with_listen)[1] == "http://[fdaa::3]:7000"
    assert env_value(options["redis_url"], {**env, "RELAY_REDIS_URL": "redis://x"}) == (
        "RELAY_REDIS_URL",
        "redis://x",
    )


def test_tables_align_columns_and_say_none_when_empty():
    table = render_table(["id", "state"], [["m1", "running"], ["machine-22", "draining"]])
    assert table == "ID          STATE\nm1          running\nmachine-22  draining\n"
    assert render_table(["id"], []) == "(none)\n"


def test_fields_render_nested_values_below_their_key():
    text = render_fields({"slug": "abc", "online": False, "dns": {"state": "ok", "records": []}})
    assert text.splitlines() == [
        "slug:   abc",
        "online: no",
        "dns:",
        "  state:   ok",
        "  records: (none)",
    ]


def test_ages_read_for_people():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert age("2026-01-02T03:04:00Z", now) == "5s ago"
    assert age("2026-01-02T02:04:05Z", now) == "1h ago"
    assert age("2025-12-30T03:04:05Z", now) == "3d ago"
    assert age(None, now) == "-"


def test_the_drain_notice_says_what_happens_and_for_how_long():
    alone = drain_notice(2, 0, 10.0)
    assert "no other machine to move 2 tunnels to" in alone and "up to 10 s" in alone
    assert "moving 1 tunnel to other machines" in drain_notice(1, 3, 2.5)
    assert "up to 2.5 s" in drain_notice(1, None, 2.5)
    assert "Ctrl-C again" in alone


async def test_the_first_signal_drains_and_only_a_sigint_after_it_stops_at_once():
    signals = StopSignals()
    signals.received(signal.SIGTERM)
    assert signals.drain.is_set() and signals.first == "SIGTERM"
    signals.received(signal.SIGTERM)
    assert not signals.now.is_set()  # a second SIGTERM: the drain already under way
    signals.received(signal.SIGINT)
    assert signals.now.is_set()
    assert EXIT_STOPPED_AT_ONCE == 130
    await asyncio.sleep(0)
