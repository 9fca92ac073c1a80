"""A rate limit on DNS API calls shared by every relay machine (a token bucket in Redis).

Providers limit per account, not per machine: Cloudflare allows 1,200 requests per five
minutes. The bucket lives in the store, so all machines draw from one budget. It holds
``burst`` tokens and refills at ``(limit - burst) / window`` per second, so no window of
``window`` seconds ever sees more than ``limit`` calls (a full bucket plus one window of
refill), unlike a fixed window, which allows twice the limit across a boundary.

A 429 pauses everyone: :meth:`RedisRateLimiter.pause` sets a pause key with the provider's
``Retry-After`` as TTL, and :meth:`acquire` waits it out before drawing a token.
The script reads the store's clock (``TIME``), so machines with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from directory._scripts import LuaScript
from directory.store import translate_errors

if TYPE_CHECKING:
    from directory.store import StoreClient

__all__ = ["MemoryRateLimiter", "RateLimiter", "RedisRateLimiter", "bucket_shape"]

# Cloudflare's documented global limit: 1,200 requests per 5 minutes per user.
DEFAULT_LIMIT = 1200
DEFAULT_WINDOW = 300.0
# Never sleep longer than this in one go, so cancellation and a lifted pause act soon.
_MAX_NAP = 5.0

# KEYS: bucket, pause. ARGV: capacity, refill per ms, key ttl ms.
# Returns 0 when a token was taken, else the milliseconds to wait before asking again.
_TAKE = LuaScript(
    "dns_rate_take",
    """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return paused
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return wait
""",
)

# KEYS: pause. ARGV: ms. Only ever lengthens a pause.
_PAUSE = LuaScript(
    "dns_rate_pause",
    """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
""",
)


class RateLimiter(Protocol):
    """What the DNS writer needs from a rate limit."""

    async def acquire(self) -> None:
        """Wait until one API call may be made."""

    async def pause(self, seconds: float) -> None:
        """Make every caller wait ``seconds`` (the provider said 429 Retry-After)."""


def bucket_shape(limit: int, window: float) -> tuple[float, float]:
    """``(burst, refill per second)`` keeping any ``window`` under ``limit`` calls."""
    if limit < 1 or window <= 0:
        raise ValueError(f"a rate limit needs limit >= 1 and window > 0, got {limit}/{window}")
    burst = float(max(1, limit // 10))
    refill = max(limit - burst, 1.0) / window
    return burst, refill


class RedisRateLimiter:
    """The shared bucket in the store; ``bucket_key``/``pause_key`` name it."""

    def __init__(
        self,
        redis: StoreClient,
        bucket_key: str,
        pause_key: str,
        *,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self._redis = redis
        self._keys = [bucket_key, pause_key]
        self._pause_key = pause_key
        burst, refill = bucket_shape(limit, window)
        self._args: list[str | bytes | int] = [
            repr(burst),
            repr(refill / 1000.0),
            int(window * 2000),
        ]

    async def acquire(self) -> None:
        """Take a token, sleeping (in short naps) while the bucket is empty or paused."""
        while True:
            with translate_errors("take a DNS rate-limit token"):
                wait_ms = int(await _TAKE(self._redis, self._keys, self._args))
            if wait_ms <= 0:
                return
            await asyncio.sleep(min(wait_ms / 1000.0, _MAX_NAP))

    async def pause(self, seconds: float) -> None:
        """Pause every machine's calls for ``seconds``."""
        if seconds <= 0:
            return
        with translate_errors("pause DNS calls"):
            await _PAUSE(self._redis, [self._pause_key], [max(1, int(seconds * 1000))])


class MemoryRateLimiter:
    """The same bucket in process memory (one machine, tests)."""

    def __init__(self, *, limit: int = DEFAULT_LIMIT, window: float = DEFAULT_WINDOW) -> None:
        self._burst, self._refill = bucket_shape(limit, window)
        self._tokens = self._burst
        self._at = time.monotonic()
        self._paused_until = 0.0
        self.waits = 0

    async def acquire(self) -> None:
        """Take a token, sleeping while none is left or a pause holds."""
        while True:
            now = time.monotonic()
            if now < self._paused_until:
                self.waits += 1
                await asyncio.sleep(min(self._paused_until - now, _MAX_NAP))
                continue
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._refill)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            self.waits += 1
            await asyncio.sleep(min((1 - self._tokens) / self._refill, _MAX_NAP))

    async def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds``."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
