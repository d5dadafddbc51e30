"""Leases from Redis: one Lua script per grant, on the exact store's own counters.

The grant script is the capped reservation of ``lease_authority``::

    cur = GET key (0 if none);  g = min(ask, limit - cur), at least 0
    if g > 0: count = INCRBY key g; EXPIRE key ttl when count == g (a new window)
    return g, count, TTL key

It uses the keys ``RedisCounterStore`` uses (the hit's key, ``windows.counter_key``)
and the same TTL rule (the seconds left in the window, at least 1, plus
``rng.randint(0, expiration_jitter)``, set when the counter starts), so a limit
counted exactly by one replica and leased by another shares one counter: exact
``INCRBY``s and granted units add up. A counter past its limit (exact hits go on
counting there) grants 0. The release script gives unspent units back with ``DECRBY``,
never below 0, and does nothing to a counter that no longer exists (its window ended).

Both scripts run by EVALSHA and are loaded on NOSCRIPT. Each touches one key, so on
Redis Cluster the client routes it to the key's node as it would any command; a
NOSCRIPT there loads the scripts on every primary.

The client is built by the caller (``redis.asyncio.Redis`` or ``RedisCluster``, for
instance from the same URL and settings as the exact store's); this class adds the
timeout and turns every failure into ``CounterStoreError``. A timed-out grant may have
happened in Redis: its units are stranded (under-admission), never spent.
"""

import asyncio
import hashlib
import random
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.ratelimit.lease_authority import Grant
from services.ratelimit.store import CounterStoreError

GRANT_SCRIPT = """
local ask = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = limit - cur
if granted > ask then granted = ask end
if granted < 0 then granted = 0 end
local count = cur
if granted > 0 then
  count = redis.call('INCRBY', KEYS[1], granted)
  if count == granted then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
  end
end
return {granted, count, redis.call('TTL', KEYS[1])}
"""

RELEASE_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local back = tonumber(ARGV[1])
if back > tonumber(cur) then back = tonumber(cur) end
if back <= 0 then return 0 end
redis.call('DECRBY', KEYS[1], back)
return back
"""

_GRANT_SHA = hashlib.sha1(GRANT_SCRIPT.encode()).hexdigest()
_RELEASE_SHA = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()
_ERRORS = (RedisError, RedisClusterException, OSError)


class ScriptClient(Protocol):
    """What this needs of a redis-py asyncio client (``Redis`` or ``RedisCluster``)."""

    # redis-py declares these as returning "Awaitable[...] | ..." (one signature for its
    # sync and asyncio clients); each is awaited here.
    def evalsha(self, sha: str, numkeys: int, *keys_and_args: str) -> Any: ...
    def script_load(self, script: str) -> Any: ...
    def ping(self) -> Any: ...
    async def aclose(self) -> None: ...


def _grant(reply: object) -> Grant:
    if not isinstance(reply, list) or len(reply) != 3 or not all(isinstance(n, int) for n in reply):
        raise CounterStoreError("redis returned an unexpected reply to the lease script")
    granted, count, ttl = reply
    return Grant(granted, count, max(ttl, 0))


class RedisLeaseAuthority:
    """Capped reservations on Redis counters, one EVALSHA each."""

    name = "redis"

    def __init__(
        self,
        client: ScriptClient,
        *,
        timeout: float,
        expiration_jitter: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._jitter = expiration_jitter
        self._rng = rng or random.Random()
        self._closed = False

    async def acquire(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        """See ``LeaseAuthority.acquire``."""
        extra = self._rng.randint(0, self._jitter) if self._jitter > 0 else 0
        reply = await self._run(_GRANT_SHA, GRANT_SCRIPT, key, ask, limit, max(ttl, 1) + extra)
        return _grant(reply)

    async def release(self, key: str, unused: int) -> int:
        """See ``LeaseAuthority.release``."""
        if unused <= 0:
            return 0
        reply = await self._run(_RELEASE_SHA, RELEASE_SCRIPT, key, unused)
        if not isinstance(reply, int):
            raise CounterStoreError("redis returned an unexpected reply to the release script")
        return reply

    async def _run(self, sha: str, script: str, key: str, *args: int) -> object:
        if self._closed:
            raise CounterStoreError("redis lease authority is closed")
        words = [str(arg) for arg in args]  # Redis arguments are strings on the wire
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._client.evalsha(sha, 1, key, *words)
                except NoScriptError:  # the script did not run: safe to send again
                    await self._client.script_load(script)
                    return await self._client.evalsha(sha, 1, key, *words)
        except (TimeoutError, RedisTimeoutError) as exc:
            raise CounterStoreError(f"redis timed out after {self._timeout:g}s") from exc
        except _ERRORS as exc:
            raise CounterStoreError(f"redis lease script failed: {exc}") from exc

    async def ping(self) -> None:
        if self._closed:
            raise CounterStoreError("redis lease authority is closed")
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.ping()
        except (TimeoutError, *_ERRORS) as exc:
            raise CounterStoreError(f"redis ping failed: {exc!r}") from exc

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()
