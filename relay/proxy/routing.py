"""Which host a client request is for (pure)."""

from __future__ import annotations

__all__ = ["slug_from_host"]


def slug_from_host(host_header: str | None, base_domain: str) -> str | None:
    """The slug of ``<slug>.<base_domain>[:port]``, or None for the relay's own names.

    Only a single label directly under the base domain names a host; anything else
    (the bare domain, an IP address, a deeper name) is the relay's own app.
    """
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.startswith("["):  # IPv6 literal: never a slug
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    host = host.rstrip(".")
    suffix = "." + base_domain
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    if not label or "." in label:
        return None
    return label
