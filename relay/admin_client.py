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


def run_hosts_command(args: argparse.Namespace) -> int:
    """Run one `relay hosts` action; prints JSON, returns the exit status."""
    headers = {"Authorization": f"Bearer {admin_token(args.data_dir)}"}
    base = args.server.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            if args.action == "add":
                body = {"name": args.name} | ({"slug": args.slug} if args.slug else {})
                response = client.post("/api/hosts", json=body)
            elif args.action == "list":
                response = client.get("/api/hosts")
            elif args.action == "show":
                response = client.get(f"/api/hosts/{args.ref}")
            else:
                response = client.delete(f"/api/hosts/{args.ref}")
    except httpx.HTTPError as exc:
        sys.stderr.write(f"relay: cannot reach {base}: {exc}\n")
        return 1
    if response.status_code == 204:
        sys.stdout.write(json.dumps({"deleted": args.ref}) + "\n")
        return 0
    try:
        payload = response.json()
    except ValueError:
        sys.stderr.write(f"relay: HTTP {response.status_code} from {base}: {response.text[:200]}\n")
        return 1
    if response.is_error:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        sys.stderr.write(
            f"relay: {error.get('message', response.reason_phrase)} "
            f"(HTTP {response.status_code}, {error.get('code', 'error')})\n"
        )
        return 1
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    return 0
