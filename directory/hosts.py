"""The host registry: hosts, their slugs and their tokens.

* A host's token is shown once, at creation, and stored only as its sha256 hex digest:
  the token key maps that digest to the host id, the record keeps it to compare.
* A slug is claimed with ``SET p:{registry}:slug:<slug> <host_id> NX``: one claim per slug for every
  kind of host, so slugs are unique across the whole DNS namespace.
* The slug claim, the token key and the index entry share one hash tag (``{registry}``)
  and appear and disappear together, in one Lua script. The record lives with the host's
  other keys (its own tag, for Redis Cluster), so creating and removing take two steps,
  ordered so that nothing reachable ever points at a missing record:

  - create writes the record first, then claims (one script; the claim decides). A
    claim that fails deletes the record again. A crash in between leaves a record that
    nothing refers to (no slug, token or index entry leads to it, and its id was never
    handed out): a few hundred bytes of garbage, never a slug taken by nobody.
  - delete undoes the claims first, then deletes the record (and the epoch counter)
    if it is still the one read. A crash in between leaves the record readable by its
    id only; running the delete again finishes it (both steps are idempotent).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, cast

import structlog

from directory._scripts import LuaScript
from directory.errors import HostNotFound, InvalidInput, SlugTaken, StoreError
from directory.models import HostRecord, decode, encode
from directory.slugs import generate_slug, validate_slug
from directory.store import mget, translate_errors

if TYPE_CHECKING:
    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = ["HOST_ID_PREFIX", "MAX_NAME_LENGTH", "HostRegistry", "hash_token"]

TOKEN_PREFIX = "rt_"  # noqa: S105 - a public prefix, not a secret
HOST_ID_PREFIX = "h_"
MAX_NAME_LENGTH = 100
# A generated slug collides with probability ~ hosts / 36**8; a few retries are plenty.
_SLUG_ATTEMPTS = 5
# Tokens we issue are 43 characters; anything far longer is not one of ours.
_MAX_TOKEN_LENGTH = 512
# A delete compares the record it read; it only differs if another delete raced us.
_DELETE_ATTEMPTS = 3

_log = structlog.get_logger("directory.hosts")

# KEYS: slug, token, index (one slot). ARGV: host_id, created_at.
_CLAIM = LuaScript(
    "claim_host",
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
""",
)

# KEYS: slug, token, index (one slot). ARGV: host_id.
# The token key and the slug claim are removed only while they still point at this host.
_UNCLAIM = LuaScript(
    "unclaim_host",
    """
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
""",
)

# KEYS: host record, epoch (the host's slot). ARGV: the record as read.
# Deletes both only while the record is still the one the caller unclaimed.
_DELETE = LuaScript(
    "delete_host",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
""",
)


def hash_token(token: str) -> str:
    """The sha256 hex digest under which a host token is stored.

    Host tokens are 256 random bits, so a fast hash is right: there is nothing to brute
    force, and a slow password hash would only cost CPU on every tunnel connect.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def _validate_name(name: str) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"a host name must be a string, not {type(name).__name__}")
    stripped = name.strip()
    if not stripped:
        raise InvalidInput("a host name cannot be empty")
    if len(stripped) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"a host name has at most {MAX_NAME_LENGTH} characters, this one has {len(stripped)}"
        )
    if not stripped.isprintable():
        raise InvalidInput(f"a host name must be printable text, got {stripped!r}")
    return stripped


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HostRegistry:
    """Registered hosts in the store, under the names of ``keys``."""

    def __init__(self, redis: StoreClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def create(
        self,
        name: str,
        slug: str | None = None,
        *,
        allow_reserved: bool = False,
        test: bool = False,
    ) -> tuple[HostRecord, str]:
        """Register a host; returns its record and its token (the only time it is shown).

        A given slug is validated (:class:`InvalidSlug`) and must be free (:class:`SlugTaken`);
        without one, a random slug is generated, retrying on the rare collision.
        ``allow_reserved`` lets tools use reserved words and test prefixes; a ``test`` host
        may use the test prefixes and is marked so its DNS records go to the test zone.
        """
        name = _validate_name(name)
        if slug is not None:
            candidates = [validate_slug(slug, allow_reserved=allow_reserved, test=test)]
        else:
            candidates = [generate_slug() for _ in range(_SLUG_ATTEMPTS)]
        # A fixed prefix: a token never starts with "-" (which a CLI would take for a flag)
        # and secret scanners can recognise it.
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_hash = hash_token(token)
        host_id = HOST_ID_PREFIX + secrets.token_hex(8)
        for candidate in candidates:
            record = HostRecord(host_id, name, candidate, token_hash, time.time(), test=test)
            if await self._create(record):
                _log.debug("hosts.created", host_id=host_id, slug=candidate)
                return record, token
            if slug is None:
                _log.debug("hosts.slug_collision", slug=candidate)
        if slug is not None:
            raise SlugTaken(f"slug {candidates[0]!r} is already taken")
        raise SlugTaken(f"no free slug found in {_SLUG_ATTEMPTS} random tries")

    async def _create(self, record: HostRecord) -> bool:
        """Write the record, then claim its slug, token and index entry (see the module)."""
        keys = self._keys
        host_key = keys.host(record.id)
        with translate_errors(f"create host {record.name!r}"):
            await self._redis.set(host_key, encode(record))
            claimed = await _CLAIM(
                self._redis,
                [keys.slug(record.slug), keys.token(record.token_hash), keys.hosts_index()],
                [record.id, repr(record.created_at)],
            )
            if not claimed:
                await self._redis.delete(host_key)
        return bool(claimed)

    async def get(self, id_or_slug: str) -> HostRecord:
        """The host with this id (``h_...``) or slug; :class:`HostNotFound` otherwise."""
        record = await self._find(id_or_slug)
        if record is None:
            raise HostNotFound(f"no host has the id or slug {id_or_slug!r}")
        return record

    async def list(self) -> list[HostRecord]:
        """Every host, oldest first (two round trips, whatever the number of hosts)."""
        with translate_errors("list hosts"):
            # Without withscores the reply is a plain list of members.
            ids = cast("list[bytes]", await self._redis.zrange(self._keys.hosts_index(), 0, -1))
            if not ids:
                return []
            host_keys = [self._keys.host(_text(i)) for i in ids]
            raws = await mget(self._redis, host_keys)
        hosts: list[HostRecord] = []
        for key, raw in zip(host_keys, raws, strict=True):
            if raw is None:
                # Only a manual edit gets here: the record is written before the index entry
                # and deleted after it.
                _log.warning("hosts.index_without_record", key=key)
                continue
            hosts.append(decode(HostRecord, raw, where=key))
        hosts.sort(key=lambda h: (h.created_at, h.id))
        return hosts

    async def delete(self, host_id: str) -> HostRecord:
        """Remove a host: record, token, index entry, epoch counter and its slug claim.

        The owner record is left to its release or TTL (no one else deletes owner keys).
        """
        keys = self._keys
        key = keys.host(host_id)
        for _ in range(_DELETE_ATTEMPTS):
            with translate_errors(f"read host {host_id}"):
                raw = await self._redis.get(key)
            if raw is None:
                raise HostNotFound(f"no host has the id {host_id!r}")
            record = decode(HostRecord, raw, where=key)
            with translate_errors(f"delete host {host_id}"):
                await _UNCLAIM(
                    self._redis,
                    [keys.slug(record.slug), keys.token(record.token_hash), keys.hosts_index()],
                    [host_id],
                )
                deleted = await _DELETE(self._redis, [key, keys.epoch(host_id)], [raw])
            if deleted:
                _log.debug("hosts.deleted", host_id=host_id, slug=record.slug)
                return record
        raise StoreError(f"host {host_id} kept changing while being deleted")

    async def authenticate(self, token: str) -> HostRecord | None:
        """The host this token belongs to, or None for an unknown token."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            return None
        token_hash = hash_token(token)
        with translate_errors("authenticate a host token"):
            host_id = await self._redis.get(self._keys.token(token_hash))
            if host_id is None:
                return None
            key = self._keys.host(_text(host_id))
            raw = await self._redis.get(key)
        if raw is None:
            return None
        record = decode(HostRecord, raw, where=key)
        # The lookup by digest already matched; this guards against a token key left
        # pointing at a host that has another token now, in constant time as a habit.
        if not hmac.compare_digest(record.token_hash, token_hash):
            return None
        return record

    async def resolve_slug(self, slug: str) -> str | None:
        """The id of the host holding ``slug``, or None (also for a string no slug can be)."""
        try:
            normalized = validate_slug(slug, allow_reserved=True)
        except InvalidInput:
            return None
        with translate_errors(f"resolve slug {normalized}"):
            host_id = await self._redis.get(self._keys.slug(normalized))
        return None if host_id is None else _text(host_id)

    async def _find(self, id_or_slug: str) -> HostRecord | None:
        if id_or_slug.startswith(HOST_ID_PREFIX):
            # "_" cannot occur in a slug, so an id can never be mistaken for one.
            host_id: str | None = id_or_slug
        else:
            host_id = await self.resolve_slug(id_or_slug)
        if host_id is None:
            return None
        key = self._keys.host(host_id)
        with translate_errors(f"read host {host_id}"):
            raw = await self._redis.get(key)
        return None if raw is None else decode(HostRecord, raw, where=key)
