"""How admin commands print: tables for people on a terminal, JSON for programs (pure).

JSON whenever ``--json`` is given or stdout is not a terminal, so scripts and pipes always
get the API's own answer; the table forms are for reading only and may change.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

__all__ = ["age", "for_people", "print_json", "render_fields", "render_table"]


def for_people(args: argparse.Namespace) -> bool:
    """Tables and sentences: stdout is a terminal and ``--json`` was not asked for."""
    return not getattr(args, "json", False) and sys.stdout.isatty()


def print_json(payload: object, *, compact: bool = False) -> None:
    """Write an API answer to stdout: indented, or one line (``compact``, for streams)."""
    text = json.dumps(payload, separators=(",", ":")) if compact else json.dumps(payload, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, headers in capitals; "(none)" when empty."""
    if not rows:
        return "(none)\n"
    table = [[h.upper() for h in headers], *[list(r) for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    return "\n".join(lines) + "\n"


def render_fields(fields: Mapping[str, object], *, indent: str = "") -> str:
    """``key: value`` lines, nested mappings and lists indented below their key."""
    width = max((len(k) for k in fields), default=0) + 1
    lines: list[str] = []
    for key, value in fields.items():
        label = f"{indent}{key + ':':<{width}}"
        if isinstance(value, dict):
            lines.append(label.rstrip())
            lines.append(render_fields(value, indent=indent + "  ").rstrip("\n"))
        elif isinstance(value, list):
            lines.append(f"{label} {'(none)' if not value else ''}".rstrip())
            lines.extend(f"{indent}  - {_text(v)}" for v in value)
        else:
            lines.append(f"{label} {_text(value)}")
    return "\n".join(lines) + "\n"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """An RFC 3339 time as how long ago it was ("42s ago", "3h ago"); "-" for none."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
