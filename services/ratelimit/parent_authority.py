"""A worker's side of counting in the parent: the parent's counters over a Unix socket.

``ParentLeaseAuthority`` is a ``lease_authority.LeaseAuthority`` and
``ParentCounterStore`` a ``store.CounterStore``; both send ``parent_protocol`` requests
to the parent's ``parent_server.LeaseServer``, which answers from one
``MemoryLeaseAuthority``. So, without Redis, the workers of one ``mixerless serve``
share every counter: leased limits through leases, the others exactly, one round trip
per call, as with Redis.

``ParentChannel`` is the connection under both: opened on first use (on the event
loop), one reader task matching replies to requests by id, so any number of requests
share it. Every call has a deadline (``timeout``, connecting included); a call that
misses it, a connection that fails or closes, a parent that answers FAILED or one whose
write buffer stops draining: each is a ``CounterStoreError``, which the rate limit
service answers UNAVAILABLE and ``LeasedCounter`` treats as an authority that cannot
answer (its held units are still spent, nothing more is admitted). The next call
connects again, so a restarted parent is picked up without a restart of the worker.

A grant whose reply comes after its call gave up is lost: its units are stranded
(``X`` in the bound: under-admission, never over-admission).
"""

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from services.inline import require_loop
from services.ratelimit.lease_authority import Grant
from services.ratelimit.parent_protocol import (
    MAX_FRAME,
    Acquire,
    CountHit,
    Counts,
    Failed,
    Granted,
    Increment,
    Ping,
    Pong,
    ProtocolError,
    Release,
    Released,
    Reply,
    Request,
    decode_reply,
    encode_request,
    read_frame,
)
from services.ratelimit.store import CounterStoreError, Hit

log = structlog.get_logger("mixerless.ratelimit")

DEFAULT_TIMEOUT = 0.5  # seconds, as --redis-timeout's default
_WRITE_HIGH = 1 << 20  # a parent that stopped reading: fail calls instead of queueing more
_R = TypeVar("_R", Granted, Released, Counts, Pong)


class _Connection:
    """One open connection: its writer, its reader task, the requests awaiting a reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.task: asyncio.Task[None] | None = None
        self.lost = False

    def fail(self, reason: str) -> None:
        """Mark the connection lost and fail every request still waiting on it."""
        self.lost = True
        self.writer.close()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(CounterStoreError(reason))
        self.pending.clear()


class ParentChannel:
    """Requests to the parent's counters over the Unix socket ``path``."""

    def __init__(
        self,
        path: Path | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._max_frame = max_frame
        self._ids = itertools.count(1)
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    async def call(self, request: Request) -> Reply:
        """Send ``request`` and wait for its reply; ``CounterStoreError`` on any failure."""
        require_loop("a call to the parent process")
        if self._closed:
            raise CounterStoreError("the connection to the parent process is closed")
        try:
            frame = encode_request(request, self._max_frame)
        except ProtocolError as exc:
            raise CounterStoreError(f"cannot send to the parent process: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                connection = await self._connected()
                if connection.writer.transport.get_write_buffer_size() > _WRITE_HIGH:
                    raise CounterStoreError("the parent process is not reading its socket")
                future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
                connection.pending[request.id] = future
                try:
                    connection.writer.write(frame)
                    reply = await future
                finally:
                    connection.pending.pop(request.id, None)
        except TimeoutError as exc:
            raise CounterStoreError(
                f"the parent process did not answer within {self._timeout:g}s"
            ) from exc
        except OSError as exc:
            raise CounterStoreError(f"cannot reach the parent process: {exc}") from exc
        if isinstance(reply, Failed):
            raise CounterStoreError(reply.message)
        return reply

    def next_id(self) -> int:
        """A request id (unsigned 32 bits; wraps after four billion requests)."""
        return next(self._ids) & 0xFFFFFFFF

    def _usable(self) -> _Connection | None:
        connection = self._connection
        if connection is None or connection.lost or connection.writer.transport.is_closing():
            return None  # (a closing one's reader fails its calls when it sees the end)
        return connection

    async def _connected(self) -> _Connection:
        connection = self._usable()
        if connection is not None:
            return connection
        async with self._connecting:
            connection = self._usable()
            if connection is not None:
                return connection
            reader, writer = await asyncio.open_unix_connection(str(self.path))
            if self._closed:
                writer.close()
                raise CounterStoreError("the connection to the parent process is closed")
            connection = _Connection(reader, writer)
            connection.task = asyncio.get_running_loop().create_task(
                self._read_replies(connection), name="parent-replies"
            )
            self._connection = connection
            return connection

    async def _read_replies(self, connection: _Connection) -> None:
        reason = "the parent process closed the connection"
        try:
            while True:
                reply = decode_reply(await read_frame(connection.reader, self._max_frame))
                future = connection.pending.get(reply.id)
                if future is not None and not future.done():
                    future.set_result(reply)
                # else: the call gave up (timed out) before its reply came
        except ProtocolError as exc:
            reason = f"malformed reply from the parent process: {exc}"
            log.warning("malformed reply from the parent process; reconnecting", error=str(exc))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if not self._closed:
                log.warning("lost the connection to the parent process", error=repr(exc))
        finally:
            connection.fail(reason)

    async def close(self) -> None:
        """Close the connection; further calls fail."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.fail("the connection to the parent process is closed")
        if connection.task is not None:
            connection.task.cancel()
            await asyncio.gather(connection.task, return_exceptions=True)


def _expect(reply: Reply, kind: type[_R]) -> _R:
    if not isinstance(reply, kind):
        raise CounterStoreError(f"the parent process answered {type(reply).__name__}")
    return reply


class ParentLeaseAuthority:
    """``LeaseAuthority`` over the parent's counters (``lease_authority``'s contract)."""

    name = "parent"

    def __init__(self, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.channel = ParentChannel(path, timeout=timeout)

    async def acquire(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
        """See ``LeaseAuthority.acquire``."""
        channel = self.channel
        reply = await channel.call(Acquire(channel.next_id(), key, ask, limit, ttl))
        return _expect(reply, Granted).grant

    async def release(self, key: str, unused: int) -> int:
        """See ``LeaseAuthority.release``."""
        if unused <= 0:
            return 0
        channel = self.channel
        reply = await channel.call(Release(channel.next_id(), key, unused))
        return _expect(reply, Released).returned

    async def ping(self) -> None:
        channel = self.channel
        _expect(await channel.call(Ping(channel.next_id())), Pong)

    async def close(self) -> None:
        await self.channel.close()


class ParentCounterStore:
    """``CounterStore`` over the parent's counters: every call's hits in one request."""

    name = "parent"

    def __init__(self, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.channel = ParentChannel(path, timeout=timeout)

    async def increment(self, hits: Sequence[Hit]) -> list[int]:
        """See ``CounterStore.increment``; one round trip to the parent."""
        channel = self.channel
        request = Increment(
            channel.next_id(), tuple(CountHit(h.key, h.addend, h.ttl) for h in hits)
        )
        counts = _expect(await channel.call(request), Counts).counts
        if len(counts) != len(hits):
            raise CounterStoreError(
                f"the parent process answered {len(counts)} counts for {len(hits)} hits"
            )
        return list(counts)

    async def ping(self) -> None:
        channel = self.channel
        _expect(await channel.call(Ping(channel.next_id())), Pong)

    async def close(self) -> None:
        await self.channel.close()
