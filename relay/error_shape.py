"""The one shape of every error answer a client gets, from the relay or the agent.

``{"error": {"code", "message", "request_id"}}``, the id also sent as ``X-Request-Id``
(DESIGN: Interfaces).
"""

from __future__ import annotations

import secrets

import msgspec

__all__ = ["json_body", "new_request_id"]

_encode = msgspec.json.Encoder().encode


def new_request_id() -> str:
    """A fresh id for one answer (16 hex digits)."""
    return secrets.token_hex(8)


def json_body(code: str, message: str, request_id: str) -> bytes:
    """``{"error": {"code", "message", "request_id"}}``."""
    return _encode({"error": {"code": code, "message": message, "request_id": request_id}})
