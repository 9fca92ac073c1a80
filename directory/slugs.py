"""Slug rules: what a host may be called under the base domain. Pure: no I/O.

A slug is one DNS label, ``<slug>.<base-domain>``. Rules, in the order they are checked
(the first broken rule is the message of :class:`~directory.errors.InvalidSlug`):

1. 1-63 characters (the DNS label limit);
2. only ``a-z``, ``0-9`` and ``-`` (input is ASCII-lowercased first; any non-ASCII
   character is refused *before* lowercasing, so e.g. the Kelvin sign never becomes ``k``);
3. no ``-`` first or last (a hostname label rule);
4. no ``--`` at positions 3-4: that shape (``xn--``) is reserved for IDNA A-labels;
5. not a reserved word (names the relay, mail or DNS infrastructure use) and not starting
   with a reserved test prefix. ``allow_reserved=True`` lifts both (tools); test hosts
   (``test=True``) may use the test prefixes but not the reserved words, because all
   hosts share one slug namespace.

Generated slugs are :data:`SLUG_LENGTH` characters of :data:`ALPHABET` drawn with
``secrets``; they never contain ``-``, so they can never start with a test prefix.
"""

from __future__ import annotations

import secrets
import string
from typing import TYPE_CHECKING

from directory.errors import InvalidSlug

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ALPHABET",
    "MAX_LENGTH",
    "RESERVED_TEST_PREFIXES",
    "RESERVED_WORDS",
    "SLUG_LENGTH",
    "generate_slug",
    "validate_slug",
]

SLUG_LENGTH = 8
ALPHABET = string.ascii_lowercase + string.digits
MAX_LENGTH = 63

_LABEL_CHARS = frozenset(ALPHABET + "-")

RESERVED_WORDS: frozenset[str] = frozenset(
    {
        # the relay's own names
        "relay", "api", "admin", "app", "dashboard", "console", "status", "metrics",
        "healthz", "readyz", "tunnel", "tunnels", "edge", "internal", "auth", "login",
        "static", "assets", "cdn", "docs", "help", "support", "billing",
        # web, mail and DNS infrastructure
        "www", "mail", "smtp", "imap", "pop", "pop3", "webmail", "mx", "ns", "ns1", "ns2",
        "ns3", "ns4", "dns", "ftp", "localhost", "autoconfig", "autodiscover", "wpad",
        "postmaster", "hostmaster", "abuse", "root", "broadcasthost",
    }
)  # fmt: skip

RESERVED_TEST_PREFIXES: tuple[str, ...] = ("test-", "e2e-", "ci-")


def generate_slug(*, choice: Callable[[str], str] = secrets.choice) -> str:
    """A fresh random slug of :data:`SLUG_LENGTH` characters that passes :func:`validate_slug`.

    ``choice`` picks one character of the alphabet; it is ``secrets.choice`` except in
    tests, which pass a deterministic one.
    """
    while True:
        slug = "".join(choice(ALPHABET) for _ in range(SLUG_LENGTH))
        if _problem(slug, allow_reserved=False) is None:
            return slug


def validate_slug(slug: str, *, allow_reserved: bool = False, test: bool = False) -> str:
    """The normalized (lowercase) slug, or :class:`InvalidSlug` saying which rule it breaks."""
    if not isinstance(slug, str):
        raise InvalidSlug(f"a slug must be a string, not {type(slug).__name__}")
    if not slug.isascii():
        bad = sorted({c for c in slug if not c.isascii()})
        raise InvalidSlug(
            f"slug {slug!r} must use only letters a-z, digits and '-'; "
            f"non-ASCII characters {bad!r} are not allowed"
        )
    normalized = slug.lower()
    problem = _problem(normalized, allow_reserved=allow_reserved, test=test)
    if problem is not None:
        raise InvalidSlug(f"slug {slug!r} is not allowed: {problem}")
    return normalized


def _problem(slug: str, *, allow_reserved: bool, test: bool = False) -> str | None:
    """Why a lowercase ASCII slug is refused, or None when it is fine."""
    if not slug:
        return "a slug cannot be empty"
    if len(slug) > MAX_LENGTH:
        return f"it is {len(slug)} characters long; a DNS label has at most {MAX_LENGTH}"
    bad = sorted(set(slug) - _LABEL_CHARS)
    if bad:
        return f"only letters a-z, digits and '-' are allowed, not {''.join(bad)!r}"
    if slug.startswith("-") or slug.endswith("-"):
        return "it must not start or end with '-'"
    if slug[2:4] == "--":
        return "'--' at positions 3-4 is reserved for IDNA names (like 'xn--')"
    if allow_reserved:
        return None
    if slug in RESERVED_WORDS:
        return f"{slug!r} is a reserved name"
    for prefix in RESERVED_TEST_PREFIXES:
        if slug.startswith(prefix) and not test:
            return f"the prefix {prefix!r} is reserved for test hosts"
    return None
