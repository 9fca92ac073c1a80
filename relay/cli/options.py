"""Command-line options made from the fields of a config struct (pure; no parsing of argv).

One :class:`Option` per field of :class:`~relay.config.ServeConfig` or
:class:`~relay.config.AgentConfig`: its flag, its environment variable, how a value given as
text becomes the field's type, and the rule a bad value breaks, so the flag, the
``RELAY_<NAME>`` variable and the struct never drift apart and every refusal names its
source and the rule (``--ping-interval must be a number > 0 (seconds), got '-1'``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from relay.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Option", "env_value", "options_of", "parse_bool", "values_from"]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
# Integer options counted in bytes; every other integer is a count, every float seconds.
_BYTES = frozenset({"max_frame", "max_header_bytes", "initial_window", "max_window", "max_body"})


def parse_bool(raw: str, source: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no`` (``on/off``), any case; anything else refused."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{source} must be true or false (also 1/0, yes/no), got {raw!r}")


@dataclass(frozen=True)
class Option:
    """One field of a config struct as a command-line option."""

    name: str
    type: Any
    info: msgspec.inspect.Type
    default: object

    @property
    def flag(self) -> str:
        """``--ping-interval`` for ``ping_interval``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """``RELAY_PING_INTERVAL`` for ``ping_interval``."""
        return "RELAY_" + self.name.upper()

    @property
    def is_bool(self) -> bool:
        """A switch: ``--x`` / ``--no-x`` on the command line."""
        return isinstance(self.info, msgspec.inspect.BoolType)

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values of a ``Literal`` field, in declaration order."""
        for candidate in (self.type, *typing.get_args(self.type)):
            if typing.get_origin(candidate) is typing.Literal:
                return tuple(str(v) for v in typing.get_args(candidate))
        return None

    @property
    def metavar(self) -> str:
        """What the value is, in the help: SECONDS, BYTES, N, URL, HOST:PORT..."""
        info = self.info
        if isinstance(info, msgspec.inspect.FloatType):
            return "SECONDS"
        if isinstance(info, msgspec.inspect.IntType):
            return "BYTES" if self.name in _BYTES else "N"
        name = self.name
        if "listen" in name or name == "inspect":
            return "HOST:PORT"
        if name.endswith(("_ca", "_dir")):
            return "FILE" if name.endswith("_ca") else "DIR"
        if name.endswith(("url", "_base", "advertise", "server")) or name == "to":
            return "URL"
        if name.endswith(("token", "secret")):
            return "TOKEN"
        return name.rsplit("_", 1)[-1].upper()

    def rule(self) -> str:
        """What a valid value looks like, for refusals."""
        info = self.info
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if isinstance(info, msgspec.inspect.FloatType | msgspec.inspect.IntType):
            kind = "a number" if isinstance(info, msgspec.inspect.FloatType) else "an integer"
            bounds = [
                f"{op} {_number(limit)}"
                for op, limit in ((">", info.gt), (">=", info.ge), ("<", info.lt), ("<=", info.le))
                if limit is not None
            ]
            unit = " (seconds)" if self.metavar == "SECONDS" else ""
            unit = " (bytes)" if self.metavar == "BYTES" else unit
            return f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}{unit}"
        return "text"

    def shown_default(self) -> str:
        """The default as the help shows it; empty when there is none to show."""
        default = self.default
        if self.is_bool:
            return "on" if default else "off"
        if default is None or default == "":
            return ""
        if isinstance(default, float | int) and not isinstance(default, bool):
            shown = _number(default)
            if self.metavar == "BYTES" and default >= 1024:
                shown += f" = {_bytes(int(default))}"
            return shown
        return str(default)

    def convert(self, raw: str, source: str) -> object:
        """``raw`` (from ``source``: a flag or a variable) as the field's type, or refused."""
        if self.is_bool:
            return parse_bool(raw, source)
        try:
            return msgspec.convert(raw, self.type, strict=False)
        except msgspec.ValidationError:
            raise ConfigError(f"{source} must be {self.rule()}, got {raw!r}") from None


def options_of(struct: type[msgspec.Struct]) -> list[Option]:
    """An :class:`Option` for every field of ``struct``, in declaration order."""
    return [
        Option(
            name=field.name,
            type=field.type,
            info=msgspec.inspect.type_info(field.type),
            default=None if field.default is msgspec.NODEFAULT else field.default,
        )
        for field in msgspec.structs.fields(struct)
    ]


def values_from(
    options: list[Option], given: Mapping[str, object], environ: Mapping[str, str]
) -> dict[str, object]:
    """Each field's value: the flag's (already converted), else its environment variable's."""
    values: dict[str, object] = {}
    for option in options:
        value = given.get(option.name)
        # listen comes before advertise in the struct: FLY_PRIVATE_IP takes its port.
        listen = values.get("listen")
        found = None if value is not None else env_value(option, environ, listen=listen)
        if found is not None:
            source, raw = found
            value = option.convert(raw, source)
        if value is not None:
            values[option.name] = value
    return values


def env_value(
    option: Option, environ: Mapping[str, str], *, listen: object = None
) -> tuple[str, str] | None:
    """``(variable, text)`` for an option: ``RELAY_<NAME>``, else the platform's own name.

    ``REDIS_URL``, ``FLY_MACHINE_ID`` and ``FLY_PRIVATE_IP`` are read as Fly.io and Redis
    hosts set them. An empty variable counts as unset. ``listen`` is the listen address
    already chosen (a flag's or its variable's): the advertised port is its port.
    """
    if raw := environ.get(option.env):
        return option.env, raw
    name = option.name
    if name == "redis_url" and (raw := environ.get("REDIS_URL")):
        return "REDIS_URL", raw
    if name == "machine_id" and (raw := environ.get("FLY_MACHINE_ID")):
        return "FLY_MACHINE_ID", raw
    if name == "advertise" and (ip := environ.get("FLY_PRIVATE_IP")):
        where = str(listen or environ.get("RELAY_LISTEN") or "0.0.0.0:8080")
        port = where.rsplit(":", 1)[-1]
        return "FLY_PRIVATE_IP", f"http://[{ip}]:{port}"
    return None


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bytes(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} bytes"
