"""Counters in Redis, shared by every mixerless replica: one round trip per batch of hits.

Build the store with ``RedisCounterStore.from_settings(settings, rng=None)``; it
opens no connection until the first call. The URL forms (one server, a Unix
socket, Sentinel, Redis Cluster, each with TLS) are listed in
``services.ratelimit.redis_url``.

Counting: one Lua script takes every key of a round trip and, per key, runs
``INCRBY key addend`` and, when the result equals the addend (the counter was
just created in this window), ``EXPIRE key ttl + jitter``; the jitter is
``rng.randint(0, expiration_jitter)`` per key. Because the TTL is always the time
left in the window, setting it again (after check-only hits left a counter at
0) keeps the window's end. The script runs by EVALSHA, loaded on NOSCRIPT.

Coalescing: at most ``MAX_IN_FLIGHT`` round trips run at once. A call arriving
while both are busy waits in a queue, and the next free round trip carries every
queued call's keys at once (up to ``MAX_BATCH_HITS``); each caller gets back its
own slice. With nothing in flight a call is sent straight away.

Redis Cluster: the keys of a round trip are grouped by hash slot and each group
is one script call (its keys then share a slot, as scripts require); the calls
go out in one non-transactional cluster pipeline, one batch per node, and
redis-py follows MOVED and ASK. A ``{...}`` hash tag inside a key, including one
that came from a request's descriptor values, only changes which node holds it.

Connections: one server and Sentinel use a ``BlockingConnectionPool`` of
``pool_size`` connections (Sentinel's own pool class is not blocking, hence
``_BlockingSentinelPool``), waiting at most ``timeout``. redis-py 8.1's asyncio
``RedisCluster`` has no blocking pool: a node with ``max_connections``
(``pool_size``) busy raises ``MaxConnectionsError``. Every operation here uses at
most one connection per node and holds a semaphore of ``pool_size``, so a burst
waits instead of failing everywhere. A failed round trip is never repeated here
(it could count twice); the cluster client retries once, after a topology change.

Failure mode: every failure (timeout, refused or lost connection, server or
cluster error) is a ``CounterStoreError`` with a short message, raised within
``timeout`` of the call's arrival, also for a call queued behind a hung round trip.
The service then answers UNAVAILABLE, and Envoy's ``failure_mode_deny`` decides
whether the request passes. Such errors lean towards counting: a call that times
out while still queued is never sent, but one whose round trip was already sent may
have been counted by Redis.
"""

import asyncio
import hashlib
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.inline import require_loop
from services.ratelimit.redis_settings import RedisSettings
from services.ratelimit.redis_url import RedisTarget, parse_redis_target
from services.ratelimit.store import CounterStoreError, Hit

MAX_IN_FLIGHT = 2
MAX_BATCH_HITS = 1024

_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local addend = tonumber(ARGV[2 * i - 1])
  local count = redis.call('INCRBY', key, addend)
  if count == addend then
    redis.call('EXPIRE', key, ARGV[2 * i])
  end
  counts[i] = count
end
return counts
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_ERRORS = (RedisError, RedisClusterException, OSError)

_Op = tuple[str, int, int]  # key, addend, TTL in seconds with the jitter added


class _Backend(Protocol):
    """A deployment shape: ``run`` is one round trip of the script over ``ops``."""

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client, for the lease authority to share."""
        ...

    async def run(self, ops: Sequence[_Op]) -> list[int]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def _script_args(ops: Sequence[_Op]) -> tuple[list[str], list[int]]:
    return [key for key, _, _ in ops], [n for _, addend, ttl in ops for n in (addend, ttl)]


def _counts(reply: object, expected: int) -> list[int]:
    if (
        not isinstance(reply, list)
        or len(reply) != expected
        or not all(isinstance(n, int) for n in reply)
    ):
        raise CounterStoreError("redis returned an unexpected reply to the counting script")
    return reply


class _ServerBackend:
    """One server, or the master that Sentinel names: the script in one round trip."""

    def __init__(self, client: Redis, sentinel: Sentinel | None = None) -> None:
        self._client = self.client = client
        self._sentinel = sentinel
        self._script = client.register_script(_SCRIPT)

    async def run(self, ops: Sequence[_Op]) -> list[int]:
        keys, args = _script_args(ops)
        return _counts(await self._script(keys=keys, args=args), len(ops))

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


class _ClusterBackend:
    """Redis Cluster: one script call per hash slot, all in one pipeline."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = self.client = client

    async def run(self, ops: Sequence[_Op]) -> list[int]:
        by_slot: dict[int, list[int]] = {}
        for position, (key, _, _) in enumerate(ops):
            by_slot.setdefault(self._client.keyslot(key), []).append(position)
        counts = [0] * len(ops)
        todo = list(by_slot.values())
        loaded = False
        while todo:
            pipe = self._client.pipeline(transaction=False)
            for positions in todo:
                keys, args = _script_args([ops[p] for p in positions])
                pipe.execute_command("EVALSHA", _SCRIPT_SHA, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            missing: list[list[int]] = []
            for positions, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and not loaded:
                    missing.append(positions)  # the script did not run: safe to send again
                    continue
                if isinstance(reply, BaseException):
                    raise reply
                for position, count in zip(positions, _counts(reply, len(positions)), strict=True):
                    counts[position] = count
            if missing:
                await self._client.script_load(_SCRIPT)  # on every primary
                loaded = True
            todo = missing
        return counts

    async def ping(self) -> None:
        await self._client.ping()  # every node

    async def close(self) -> None:
        await self._client.aclose()


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery, with ``BlockingConnectionPool``'s wait for a connection."""


def _connect(target: RedisTarget, settings: RedisSettings) -> _Backend:
    """The redis-py client for ``target``; nothing is opened yet."""
    socket: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.timeout,
    }
    auth = {"username": target.username, "password": target.password}
    if target.mode == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.addresses]
        cluster_args: dict[str, Any] = {**auth, **socket, **target.tls_options}
        cluster = RedisCluster(
            startup_nodes=nodes,
            max_connections=settings.pool_size,
            retry=Retry(NoBackoff(), 1),
            ssl=target.tls,
            **cluster_args,
        )
        return _ClusterBackend(cluster)
    pool_args: dict[str, Any] = {
        "max_connections": settings.pool_size,
        "timeout": settings.timeout,
        "db": target.db,
        **auth,
        **socket,
        **target.tls_options,
    }
    if target.mode == "sentinel":
        sentinel = Sentinel(
            list(target.addresses),
            sentinel_kwargs={**socket, "retry": Retry(NoBackoff(), 0)},
        )
        client = sentinel.master_for(
            target.master_name or "",
            connection_pool_class=_BlockingSentinelPool,
            ssl=target.tls,
            **pool_args,
        )
        return _ServerBackend(client, sentinel)
    if target.mode == "unix":
        pool = BlockingConnectionPool(
            connection_class=UnixDomainSocketConnection, path=target.socket_path, **pool_args
        )
    else:
        host, port = target.addresses[0]
        connection_class = SSLConnection if target.tls else Connection
        pool = BlockingConnectionPool(
            connection_class=connection_class, host=host, port=port, **pool_args
        )
    return _ServerBackend(Redis.from_pool(pool))


def _describe(exc: BaseException, timeout: float) -> str:
    """A one-line reason for ``exc``, without redis-py's long client reprs."""
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return f"redis timed out after {timeout:g}s"
    text = str(exc).split(" : <", 1)[0]  # MasterNotFoundError appends every sentinel's repr
    text = text if len(text) <= 200 else text[:197] + "..."
    if isinstance(exc, RedisConnectionError | OSError):
        return f"redis connection failed: {text}"
    if isinstance(exc, RedisClusterException):
        return f"redis cluster failed: {text}"
    return f"redis error: {text}"


@dataclass(slots=True)
class _Waiting:
    """One ``increment`` call waiting for its counts."""

    ops: list[_Op]
    future: asyncio.Future[list[int]]


def _fail(batch: Sequence[_Waiting], message: str) -> None:
    """Give each waiting caller its own ``CounterStoreError``."""
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(CounterStoreError(message))


class RedisCounterStore:
    """Fixed-window counters in Redis; concurrent calls share round trips."""

    name = "redis"

    def __init__(
        self,
        backend: _Backend,
        *,
        timeout: float,
        pool_size: int,
        expiration_jitter: int,
        rng: random.Random | None = None,
    ) -> None:
        """Use ``from_settings``; this takes an already built backend."""
        self._backend = backend
        self._timeout = timeout
        self._jitter = expiration_jitter
        self._rng = rng or random.Random()
        self._connections = asyncio.Semaphore(pool_size)
        self._max_in_flight = min(MAX_IN_FLIGHT, pool_size)
        self._queue: deque[_Waiting] = deque()
        self._draining = 0
        self._workers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client, shared by the lease authority (``counting.py``)."""
        return self._backend.client

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, *, rng: random.Random | None = None
    ) -> "RedisCounterStore":
        """The store for ``settings.url``; ``ValueError`` names what is wrong with a bad URL."""
        backend = _connect(parse_redis_target(settings.url), settings)
        return cls(
            backend,
            timeout=settings.timeout,
            pool_size=settings.pool_size,
            expiration_jitter=settings.expiration_jitter,
            rng=rng,
        )

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """Count ``hits`` (a TTL below 1 s counts as 1 s); see ``CounterStore.increment``."""
        if self._closed:
            raise CounterStoreError("redis store is closed")
        if not hits:
            return []
        require_loop("a Redis round trip")
        ops = [(hit.key, hit.addend, max(hit.ttl, 1) + self._extra_ttl()) for hit in hits]
        waiting = _Waiting(ops, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._draining < self._max_in_flight:
            self._draining += 1
            worker = asyncio.create_task(self._drain())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        # The deadline runs from this call's arrival, not from its round trip's start: a
        # call queued behind a hung round trip answers in time too. Timing out cancels
        # the future: still queued, its hits are never sent; already sent, they may be
        # counted although the call fails (errors lean towards counting).
        try:
            async with asyncio.timeout(self._timeout):
                return await waiting.future
        except TimeoutError:
            raise CounterStoreError(_describe(TimeoutError(), self._timeout)) from None

    def _extra_ttl(self) -> int:
        return self._rng.randint(0, self._jitter) if self._jitter > 0 else 0

    def _next_batch(self) -> list[_Waiting]:
        """Queued calls for one round trip: the oldest, then more up to ``MAX_BATCH_HITS``."""
        batch: list[_Waiting] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].ops) <= MAX_BATCH_HITS):
            waiting = self._queue.popleft()
            if not waiting.future.done():  # a cancelled caller's hits are not sent
                batch.append(waiting)
                size += len(waiting.ops)
        return batch

    async def _drain(self) -> None:
        """Send queued calls, a batch per round trip, until none wait."""
        try:
            while batch := self._next_batch():
                try:
                    counts = await self._round_trip([op for w in batch for op in w.ops])
                except CounterStoreError as exc:
                    _fail(batch, str(exc))
                    continue
                except Exception as exc:
                    _fail(batch, f"redis store failed unexpectedly: {exc!r}")
                    continue
                except BaseException:
                    _fail(batch, "redis store is closed")
                    raise
                start = 0
                for w in batch:
                    if not w.future.done():
                        w.future.set_result(counts[start : start + len(w.ops)])
                    start += len(w.ops)
        finally:
            self._draining -= 1

    async def _round_trip(self, ops: Sequence[_Op]) -> list[int]:
        try:
            async with asyncio.timeout(self._timeout), self._connections:
                return await self._backend.run(ops)
        except _ERRORS as exc:
            raise CounterStoreError(_describe(exc, self._timeout)) from exc

    async def ping(self) -> None:
        if self._closed:
            raise CounterStoreError("redis store is closed")
        try:
            async with asyncio.timeout(self._timeout), self._connections:
                await self._backend.ping()
        except _ERRORS as exc:
            raise CounterStoreError(_describe(exc, self._timeout)) from exc

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._workers):
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        _fail(list(self._queue), "redis store is closed")
        self._queue.clear()
        await self._backend.close()
