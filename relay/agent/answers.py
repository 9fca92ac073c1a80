"""Error answers the agent itself makes for a client (its service failed or refused)."""

from __future__ import annotations

from relay.error_shape import json_body, new_request_id

__all__ = ["error_answer"]


def error_answer(code: str, message: str) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an error answer: ``{"error": {code, message, request_id}}``.

    Every error answer a client gets carries ``X-Request-Id`` (DESIGN: Interfaces), the
    agent's own as well as the relay's; the message never names an internal address.
    """
    request_id = new_request_id()
    headers = [("Content-Type", "application/json"), ("X-Request-Id", request_id)]
    return headers, json_body(code, message, request_id)
