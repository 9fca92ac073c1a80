"""Query-string values of the admin API, read strictly: a value we do not know is refused."""

from __future__ import annotations

__all__ = ["flag"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def flag(raw: str | None) -> bool | None:
    """``?dry_run=1`` and the like: True, False (absent or a false word), None when unknown.

    A typo such as ``dry_run=ture`` must not be read as "not a dry run" and change records.
    """
    if raw is None:
        return False
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None
