"""Configuration of `relay serve` and `relay agent` (validated msgspec structs).

Every option is a command-line flag and also an environment variable ``RELAY_<NAME>``;
``REDIS_URL``, ``FLY_MACHINE_ID`` and ``FLY_PRIVATE_IP`` are read as Fly sets them.
"""

from __future__ import annotations

import ipaddress
import secrets
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from relay.errors import ConfigError
from relay.wire.protocol import Limits

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AgentConfig", "ServeConfig", "is_loopback", "load_agent_file", "parse_hostport"]

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
LogLevel = Literal["debug", "info", "warning", "error"]


class TunnelLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The tunnel limits both ``relay serve`` and ``relay agent`` take as options."""

    max_frame: Annotated[int, msgspec.Meta(ge=16 * 1024)] = 1 << 20
    max_streams: Positive = 1000
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    initial_window: Annotated[int, msgspec.Meta(ge=16 * 1024, le=2**31 - 1)] = 1024 * 1024
    max_window: Annotated[int, msgspec.Meta(ge=16 * 1024, le=2**31 - 1)] = 16 * 1024 * 1024

    @property
    def tunnel_limits(self) -> Limits:
        """These options as the limits announced in the handshake."""
        return Limits(
            max_frame=self.max_frame,
            max_streams=self.max_streams,
            max_header_bytes=self.max_header_bytes,
            initial_window=self.initial_window,
            max_window=self.max_window,
        )


class ServeConfig(TunnelLimits, frozen=True, kw_only=True):
    """Settings of one relay machine."""

    listen: str = "127.0.0.1:8080"
    base_domain: str = "localhost"
    redis_url: str | None = None
    # Speak Redis Cluster to the nodes of redis_url; verify a rediss:// store with redis_ca.
    redis_cluster: bool = False
    redis_ca: str | None = None
    machine_id: str = ""
    data_dir: str = ".relay"
    route_mode: Literal["fly-replay", "forward"] = "fly-replay"
    advertise: str | None = None
    key_prefix: str = "relay"
    admin_token: str | None = None
    cluster_secret: str | None = None
    trust_fly_headers: bool = False
    ping_interval: Seconds = 10.0
    ping_misses: Positive = 3
    request_timeout: Seconds = 120.0
    # Client connections: the whole request head must arrive within header_timeout; an
    # idle keep-alive connection closes after keepalive_timeout (nginx's default).
    header_timeout: Seconds = 15.0
    keepalive_timeout: Seconds = 75.0
    # A deadline on every store call: past it a request gets 503 store_unavailable.
    store_timeout: Seconds = 2.0
    drain_timeout: Seconds = 10.0
    reconnect_grace: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    reconcile_interval: Seconds = 30.0
    # Event log (relay/machine/events.py): approximate MAXLEN of the stream, outbox capacity, and
    # how long an entry may sit with a consumer before another one reclaims it.
    events_maxlen: Positive = 100_000
    events_outbox: Positive = 10_000
    events_claim_idle: Seconds = 30.0
    dns_offline_grace: Seconds = 86400.0
    # DNS (relay/machine/dns_setup.py; secrets come from the environment, never from here).
    dns_mode: Literal["wildcard", "managed"] = "wildcard"
    dns_provider: Literal["memory", "cloudflare", "powerdns"] | None = None
    dns_zone: str | None = None
    dns_test_zone: str | None = None
    dns_target: str | None = None
    dns_ttl: Positive = 300
    dns_sync_interval: Seconds = 900.0
    dns_orphan_grace: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    dns_max_deletes: Annotated[int, msgspec.Meta(ge=0)] = 100
    dns_rate_limit: Positive = 1200
    dns_rate_window: Seconds = 300.0
    cloudflare_api_base: str = "https://api.cloudflare.com/client/v4"
    cloudflare_proxied: bool = False
    pdns_api_url: str | None = None
    pdns_server_id: str = "localhost"
    hello_timeout: Seconds = 10.0
    max_body: Annotated[int, msgspec.Meta(ge=0)] = 0
    metrics_token: str | None = None
    # /metrics on its own listener (no token there): keep it off the public port.
    metrics_listen: str | None = None
    # relay_host_requests_total{host}: one series per host held here (off: cardinality).
    per_host_metrics: bool = False
    # One JSON line per proxied request on stderr (relay/proxy/access_log.py).
    access_log: bool = False
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: LogLevel = "info"

    @property
    def owner_ttl_ms(self) -> int:
        """Owner-key TTL: one ping interval per allowed miss."""
        return int(self.ping_interval * self.ping_misses * 1000)

    @property
    def limits(self) -> Limits:
        """What this relay accepts from agents."""
        return msgspec.structs.replace(self.tunnel_limits, max_body=self.max_body)

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split into host and port."""
        return parse_hostport(self.listen)

    def resolved(self) -> ServeConfig:
        """Fill derived defaults (machine id) and check cross-field rules."""
        self.host_port  # noqa: B018 - validates the address early
        if self.metrics_listen is not None:
            parse_hostport(self.metrics_listen)
        machine_id = self.machine_id or f"m-{secrets.token_hex(4)}"
        base = self.base_domain.strip(".").lower()
        if not base or any(not part for part in base.split(".")):
            raise ConfigError(f"invalid --base-domain {self.base_domain!r}")
        advertise = self.advertise
        if advertise is None:
            host, port = self.host_port
            host = "127.0.0.1" if host in {"0.0.0.0", "", "::"} else host
            advertise = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        _check_url(advertise, "--advertise")
        if self.redis_url is not None:
            scheme = urlsplit(self.redis_url).scheme
            if scheme not in {"redis", "rediss", "unix"}:
                raise ConfigError(
                    f"--redis-url must be redis://, rediss:// or unix:// (got {scheme!r})"
                )
        self._check_store_options()
        from relay.dns_options import check_dns_config  # noqa: PLC0415 - keep `relay agent` lean

        check_dns_config(msgspec.structs.replace(self, base_domain=base))
        return msgspec.structs.replace(
            self, machine_id=machine_id, base_domain=base, advertise=advertise
        )

    def _check_store_options(self) -> None:
        """--redis-cluster and --redis-ca need a store URL they apply to."""
        scheme = None if self.redis_url is None else urlsplit(self.redis_url).scheme
        if self.redis_cluster and scheme not in {"redis", "rediss"}:
            raise ConfigError(
                "--redis-cluster needs --redis-url redis:// or rediss:// naming a node of the "
                "cluster (the embedded store and unix sockets are single servers)"
            )
        if self.redis_ca is not None:
            if scheme != "rediss":
                raise ConfigError(
                    f"--redis-ca {self.redis_ca} verifies a TLS store: it needs a rediss:// "
                    "--redis-url"
                )
            if not Path(self.redis_ca).is_file():
                raise ConfigError(f"--redis-ca {self.redis_ca}: no such file")

    @property
    def data_path(self) -> Path:
        """The data directory as a path."""
        return Path(self.data_dir)


class AgentConfig(TunnelLimits, frozen=True, kw_only=True):
    """Settings of one host agent."""

    server: str = "http://127.0.0.1:8080"
    token: str = ""
    to: str = ""
    name: str = ""  # a label for this tunnel in the agent's output
    quiet: bool = False  # no line per request
    # The local request inspector's HOST:PORT (relay/agent/inspector.py); off when None.
    inspect: str | None = None
    inspect_allow_remote: bool = False
    ping_interval: Seconds = 10.0
    silence_timeout: Seconds = 30.0
    max_backoff: Seconds = 30.0
    connect_timeout: Seconds = 10.0
    stable_after: Seconds = 30.0
    upstream_connections: Positive = 100
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: LogLevel = "info"

    @property
    def limits(self) -> Limits:
        """What this agent accepts from the relay."""
        return self.tunnel_limits

    def resolved(self) -> AgentConfig:
        """Check the settings an agent cannot run without."""
        if not self.token:
            raise ConfigError("--token (or RELAY_TOKEN) is required")
        if not self.to:
            raise ConfigError("--to (or RELAY_TO) is required, e.g. http://127.0.0.1:3000")
        _check_url(self.server, "--server")
        _check_url(self.to, "--to")
        if self.inspect is not None:
            self._check_inspect(self.inspect)
        return self

    def _check_inspect(self, address: str) -> None:
        host, port = parse_hostport(address)
        # The inspector shows every header and body (cookies, tokens): loopback only,
        # unless asked for in so many words.
        if not is_loopback(host) and not self.inspect_allow_remote:
            raise ConfigError(
                f"--inspect {address}: the inspector shows request headers and bodies;"
                " it listens on loopback only (127.0.0.1, ::1, localhost) unless"
                " --inspect-allow-remote is given"
            )
        to = urlsplit(self.to)
        if to.port == port and (to.hostname == host or is_loopback(to.hostname or "")):
            raise ConfigError(f"--to {self.to} is the inspector's own address {address}")

    @property
    def tunnel_url(self) -> str:
        """The relay's tunnel endpoint as a WebSocket URL."""
        parts = urlsplit(self.server)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        return f"{scheme}://{parts.netloc}/tunnel"


class TunnelEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[[tunnel]]`` of an agent file."""

    token: Annotated[str, msgspec.Meta(min_length=1)]
    to: Annotated[str, msgspec.Meta(min_length=1)]
    name: str = ""


_PER_TUNNEL = frozenset({"token", "to", "name"})

# The file's shape: every agent option at the top level (shared by its tunnels) except
# the per-tunnel ones, and a list of [[tunnel]]. Made from AgentConfig so they never drift.
_AgentFile: Any = msgspec.defstruct(
    "AgentFile",
    [
        (f.name, f.type, f.default if f.default is not msgspec.NODEFAULT else None)
        for f in msgspec.structs.fields(AgentConfig)
        if f.name not in _PER_TUNNEL
    ]
    + [("tunnel", list[TunnelEntry])],
    kw_only=True,
    forbid_unknown_fields=True,
)


def load_agent_file(path: str, overrides: Mapping[str, object]) -> list[AgentConfig]:
    """The tunnels of an agent file (TOML), one resolved config each.

    Shared settings sit at the top level, each ``[[tunnel]]`` has its ``token``, ``to``
    and an optional ``name``; ``overrides`` (options given as flags or environment
    variables) win over the file's top level. Any fault names its key.
    """
    try:
        with Path(path).open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from exc
    try:
        msgspec.convert(raw, _AgentFile)
    except msgspec.ValidationError as exc:
        hint = ""
        if "unknown field `token`" in str(exc) or "unknown field `to`" in str(exc):
            hint = " (token and to belong in each [[tunnel]])"
        raise ConfigError(f"--config {path}: {exc}{hint}") from exc
    tunnels = raw.pop("tunnel")
    if not tunnels:
        raise ConfigError(f"--config {path}: no [[tunnel]] given")
    shared = {**raw, **overrides}
    configs: list[AgentConfig] = []
    tokens: dict[str, int] = {}
    for i, entry in enumerate(tunnels):
        where = f"--config {path}: tunnel[{i}]"
        if entry["token"] in tokens:
            raise ConfigError(f"{where} repeats the token of tunnel[{tokens[entry['token']]}]")
        tokens[entry["token"]] = i
        try:
            cfg = msgspec.convert({**shared, **entry}, AgentConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"--config {path}: {exc}") from exc
        try:
            configs.append(cfg.resolved())
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return configs


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6) with a clear error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _check_url(value: str, flag: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.netloc:
        raise ConfigError(f"{flag} must be an http(s) URL, got {value!r}")
