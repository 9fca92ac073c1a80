"""The `relay` command: serve, agent, and admin commands against a running relay.

Options of `serve` and `agent` come from the fields of their config structs, so a flag,
its ``RELAY_<NAME>`` environment variable and the struct can never drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from directory.errors import DirectoryError
from relay.cli.directory import add_directory_parser, run_directory_command
from relay.cli.dns import add_dns_commands, run_dns_command
from relay.config import AgentConfig, ServeConfig, parse_hostport
from relay.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

__all__ = ["main"]

_HELP = {
    "listen": "HOST:PORT to listen on",
    "base_domain": "hosts are served at <slug>.<base-domain>",
    "redis_url": "Redis/Valkey URL (REDIS_URL); default: an embedded Valkey under --data-dir",
    "redis_cluster": "speak Redis Cluster to the nodes of --redis-url (one node's URL is "
    "enough: the others are discovered); every key of one host lives in one hash slot",
    "redis_ca": "CA certificate file (PEM) that verifies a rediss:// store; default: the "
    "system's trusted CAs",
    "machine_id": "this machine's id (FLY_MACHINE_ID); default: generated",
    "data_dir": "data directory (admin token, embedded store)",
    "route_mode": "how requests for tunnels on other machines travel",
    "advertise": "routing address other machines use to reach this one",
    "server": "relay URL",
    "token": "host token (shown once by `relay hosts add`)",
    "to": "local service to expose, e.g. http://127.0.0.1:3000",
    "dns_mode": "wildcard: one *.<base-domain> record, nothing per host; managed: per-host records",
    "dns_provider": "memory|cloudflare|powerdns (managed mode; secrets from the environment)",
    "dns_zone": "DNS zone holding <slug>.<base-domain>; default: the base domain",
    "dns_test_zone": "separate zone for test hosts (created with test: true)",
    "dns_target": "what records point at: a name (CNAME) or IPv4/IPv6 addresses (A/AAAA)",
    "dns_offline_grace": "seconds a host's records outlive its disconnect",
    "dns_orphan_grace": "a sync spares orphans younger than this (seconds)",
    "dns_max_deletes": "most records one sync deletes",
    "dns_rate_limit": "DNS API calls allowed per --dns-rate-window, shared by all machines",
}


def _env_name(field: str) -> str:
    return "RELAY_" + field.upper()


def _platform_env(field: str) -> str | None:
    """Variables Fly.io and Redis hosts set under their own names."""
    if field == "redis_url":
        return os.environ.get("REDIS_URL")
    if field == "machine_id":
        return os.environ.get("FLY_MACHINE_ID")
    if field == "advertise" and (ip := os.environ.get("FLY_PRIVATE_IP")):
        port = os.environ.get("RELAY_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[-1]
        return f"http://[{ip}]:{port}"
    return None


def _add_struct_options(parser: argparse.ArgumentParser, struct: type[msgspec.Struct]) -> None:
    for field in msgspec.structs.fields(struct):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not msgspec.NODEFAULT else None
        shown = "" if default in {None, ""} else f" (default: {default})"
        options: dict[str, Any] = {
            "dest": field.name,
            "default": None,
            "help": f"{_HELP.get(field.name, field.name.replace('_', ' '))}{shown}"
            f" [env {_env_name(field.name)}]",
        }
        if field.type is bool:  # also a bare flag: `--redis-cluster` means true
            options.update(nargs="?", const="true", metavar="BOOL")
        parser.add_argument(flag, **options)


def _build(struct: type[msgspec.Struct], args: argparse.Namespace) -> Any:  # noqa: ANN401 - the struct
    values: dict[str, str] = {}
    for field in msgspec.structs.fields(struct):
        value = getattr(args, field.name, None)
        if value is None:
            value = os.environ.get(_env_name(field.name)) or _platform_env(field.name)
        if value is not None:
            values[field.name] = value
    try:
        return msgspec.convert(values, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid option: {exc}") from exc


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up where it is installed

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _agent_main(cfg: AgentConfig) -> int:
    from relay.agent.runner import run_agent  # noqa: PLC0415 - keep `relay serve` lean
    from relay.logs import configure_logging  # noqa: PLC0415

    configure_logging(cfg.log_format, cfg.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_agent(cfg, stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a relay machine")
    _add_struct_options(serve, ServeConfig)
    agent = sub.add_parser("agent", help="connect a host's local service to a relay")
    _add_struct_options(agent, AgentConfig)
    edge = sub.add_parser("edge", help="local stand-in for Fly's proxy (honours fly-replay)")
    edge.add_argument("--listen", default=os.environ.get("RELAY_EDGE_LISTEN", "127.0.0.1:8000"))
    edge.add_argument(
        "--machine",
        action="append",
        default=[],
        metavar="ID=URL",
        help="a relay machine behind the edge (repeat)",
    )
    hosts = sub.add_parser("hosts", help="manage hosts on a running relay")
    hosts_sub = hosts.add_subparsers(dest="action", required=True)
    add = hosts_sub.add_parser("add", help="register a host; prints its token once")
    add.add_argument("name")
    add.add_argument("--slug", default=None)
    hosts_sub.add_parser("list", help="list hosts")
    show = hosts_sub.add_parser("show", help="show one host")
    show.add_argument("ref", metavar="ID")
    rm = hosts_sub.add_parser("rm", help="remove a host (closes its tunnel)")
    rm.add_argument("ref", metavar="ID")
    for p in hosts_sub.choices.values():
        p.add_argument("--server", default=os.environ.get("RELAY_SERVER", "http://127.0.0.1:8080"))
        p.add_argument("--data-dir", default=os.environ.get("RELAY_DATA_DIR", ".relay"))
    add_directory_parser(sub)
    add_dns_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `relay` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from relay.server.main import serve  # noqa: PLC0415

            cfg = _build(ServeConfig, args).resolved()
            return _run(serve(cfg))
        if args.command == "agent":
            return _run(_agent_main(_build(AgentConfig, args).resolved()))
        if args.command == "edge":
            from relay.edge import EdgeConfig, parse_machines, run_edge  # noqa: PLC0415

            parse_hostport(args.listen)
            return _run(run_edge(EdgeConfig(args.listen, parse_machines(args.machine))))
        if args.command == "directory":
            return run_directory_command(args)
        if args.command == "dns":
            return run_dns_command(args)
        from relay.cli.client import run_hosts_command  # noqa: PLC0415

        return run_hosts_command(args)
    except ConfigError as exc:
        sys.stderr.write(f"relay: {exc}\n")
        return 2
    except (DirectoryError, StartupError) as exc:
        sys.stderr.write(f"relay: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
