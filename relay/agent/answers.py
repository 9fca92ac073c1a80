"""Error answers the agent itself makes for a client (its service failed or refused)."""

from __future__ import annotations

import secrets

import msgspec

__all__ = ["error_answer"]

_encode = msgspec.json.Encoder().encode


def error_answer(code: str, message: str) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an error answer: ``{"error": {code, message, request_id}}``.

    Every error answer a client gets carries ``X-Request-Id`` (DESIGN: Interfaces), the
    agent's own as well as the relay's; the message never names an internal address.
    """
    request_id = secrets.token_hex(8)
    body = _encode({"error": {"code": code, "message": message, "request_id": request_id}})
    return [("Content-Type", "application/json"), ("X-Request-Id", request_id)], body
