"""The PromQL of deploy/ (alert rules, Grafana dashboard) and the metric names it reads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERTS = DEPLOY / "alerts.yml"
DASHBOARD = DEPLOY / "dashboard.json"

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "bool", "offset", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promtool() -> str:
    """The promtool binary (scripts/ensure-test-deps.sh installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/ensure-test-deps.sh (make test does)")
    return path


def alert_expressions() -> list[str]:
    """Every ``expr:`` of deploy/alerts.yml (block scalars included).

    Read by hand rather than with a YAML library: the file's shape is fixed (each
    ``expr: |`` block is indented deeper than its key), and promtool checks the YAML.
    """
    lines = ALERTS.read_text().splitlines()
    found: list[str] = []
    i = 0
    while i < len(lines):
        key, _, rest = lines[i].strip().partition(":")
        if key == "expr":
            rest = rest.strip()
            if rest in {"|", ">", "|-", ">-"}:
                indent = len(lines[i]) - len(lines[i].lstrip())
                block: list[str] = []
                i += 1
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
                ):
                    block.append(lines[i].strip())
                    i += 1
                found.append(" ".join(block))
                continue
            found.append(rest)
        i += 1
    return found


def dashboard_expressions() -> list[str]:
    """Every query of deploy/dashboard.json: panel targets and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        found.append(query["query"] if isinstance(query, dict) else query)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL (or Grafana ``label_values``) expression selects."""
    names = set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,", expr))
    expr = re.sub(r"label_values\([^)]*\)", " ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # string literals (label values)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for match in _IDENT.finditer(expr):
        word = match.group()
        if word.lower() in _KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue  # an operator keyword or a function
        if expr[: match.start()].endswith("$"):
            continue  # a Grafana variable
        names.add(word)
    return names


def samples(text: str) -> dict[str, float]:
    """Every sample line of Prometheus text: ``name{labels}`` -> value."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found
