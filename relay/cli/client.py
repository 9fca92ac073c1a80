"""`relay hosts ...`: admin commands that talk to a running relay's API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from relay.errors import ConfigError

if TYPE_CHECKING:
    import argparse

__all__ = ["admin_token", "run_hosts_command"]


def admin_token(data_dir: str) -> str:
    """``RELAY_ADMIN_TOKEN``, else ``<data-dir>/admin-token``."""
    token = os.environ.get("RELAY_ADMIN_TOKEN")
    if token:
        return token
    path = Path(data_dir) / "admin-token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"no admin token: set RELAY_ADMIN_TOKEN or run where {path} exists ({exc.strerror})"
        ) from exc


def api_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: object = None,
    timeout: float = 10.0,
) -> tuple[bool, object]:
    """Call a running relay's admin API (``--server``, admin token from env or data dir).

    Returns ``(ok, payload)``; failures are already reported on stderr in one line.
    """
    headers = {"Authorization": f"Bearer {admin_token(args.data_dir)}"}
    base = args.server.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
            response = client.request(method, path, params=params, json=body)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"relay: cannot reach {base}: {exc}\n")
        return False, None
    if response.status_code == 204:
        return True, None
    try:
        payload = response.json()
    except ValueError:
        sys.stderr.write(f"relay: HTTP {response.status_code} from {base}: {response.text[:200]}\n")
        return False, None
    if response.is_error:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        sys.stderr.write(
            f"relay: {error.get('message', response.reason_phrase)} "
            f"(HTTP {response.status_code}, {error.get('code', 'error')})\n"
        )
        return False, payload
    return True, payload


def print_json(payload: object) -> None:
    """Write an API answer to stdout, indented."""
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def run_hosts_command(args: argparse.Namespace) -> int:
    """Run one `relay hosts` action; prints JSON, returns the exit status."""
    if args.action == "add":
        body = {"name": args.name} | ({"slug": args.slug} if args.slug else {})
        ok, payload = api_request(args, "POST", "/api/hosts", body=body)
    elif args.action == "list":
        ok, payload = api_request(args, "GET", "/api/hosts")
    elif args.action == "show":
        ok, payload = api_request(args, "GET", f"/api/hosts/{args.ref}")
    else:
        ok, payload = api_request(args, "DELETE", f"/api/hosts/{args.ref}")
        payload = {"deleted": args.ref}
    if not ok:
        return 1
    print_json(payload)
    return 0
