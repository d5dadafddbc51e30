"""The parent's side of worker counting: its counters, served over a Unix domain socket.

``LeaseServer`` answers the requests of ``parent_protocol`` (ACQUIRE, RELEASE,
INCREMENT, PING) from one ``MemoryLeaseAuthority``: every worker's leases and exact
hits land in the same dict, so a limit is shared by all workers as it would be in
Redis (``docs/architecture.md``, "Leased quota: the bound").

* The socket lives in a private directory: by default a new ``mkdtemp`` directory
  (mode 0700, removed on ``close``), so only this user's processes can connect.
* Each connection is read frame by frame; the authority's calls never wait (one lock,
  no I/O), so a request is answered before the next one is read, and the loop is never
  held longer than one grant.
* A malformed message (``parent_protocol.ProtocolError``: a bad op, a bad length, a
  frame over the bound) closes that connection only, with one warning; the worker
  reconnects on its next call. A request the authority fails on (a bug) is answered
  FAILED, which the worker turns into ``CounterStoreError``; the connection stays.
"""

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

import structlog

from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.parent_protocol import (
    MAX_FRAME,
    Acquire,
    Counts,
    Failed,
    Granted,
    Increment,
    Pong,
    ProtocolError,
    Release,
    Released,
    Reply,
    Request,
    decode_request,
    encode_reply,
    read_frame,
)
from services.ratelimit.store import Hit

log = structlog.get_logger("mixerless.ratelimit")

SOCKET_NAME = "counters.sock"
_WRITE_HIGH = 1 << 20  # wait for a worker that stops reading once this much is queued


def private_socket_path(prefix: str = "mixerless-") -> Path:
    """A socket path in a new directory only this user can enter (``mkdtemp``: 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix)) / SOCKET_NAME


class LeaseServer:
    """Serves ``authority`` to worker processes on the Unix socket ``path``."""

    def __init__(
        self,
        authority: MemoryLeaseAuthority,
        path: Path | None = None,
        *,
        max_frame: int = MAX_FRAME,
    ) -> None:
        """Without ``path``, the socket goes in a new private directory (removed on
        ``close``); with one, its directory is the caller's, and should be private."""
        self.authority = authority
        self._owns_directory = path is None
        self.path = path if path is not None else private_socket_path()
        self._max_frame = max_frame
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def connections(self) -> int:
        """Workers connected right now."""
        return len(self._connections)

    async def start(self) -> Path:
        """Listen; returns the socket's path (a stale socket file there is replaced)."""
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self.path

    async def close(self) -> None:
        """Stop listening, close every connection, remove the socket (and its directory
        when it was made here)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing a connection ends its reader (end of stream); a handler task is never
        # cancelled: asyncio's stream protocol would report that as an error.
        for writer in list(self._connections.values()):
            writer.close()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._owns_directory:
            shutil.rmtree(self.path.parent, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                request = decode_request(await read_frame(reader, self._max_frame))
                writer.write(encode_reply(self._answer(request), self._max_frame))
                if writer.transport.get_write_buffer_size() > _WRITE_HIGH:
                    await writer.drain()
        except ProtocolError as exc:
            log.warning("malformed message from a worker: closing its connection", error=str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away (or close() closed the connection)
        finally:
            del self._connections[task]
            writer.close()

    def _answer(self, request: Request) -> Reply:
        try:
            if isinstance(request, Acquire):
                grant = self.authority.grant(request.key, request.ask, request.limit, request.ttl)
                return Granted(request.id, grant)
            if isinstance(request, Release):
                return Released(request.id, self.authority.give_back(request.key, request.unused))
            if isinstance(request, Increment):
                hits = [Hit(h.key, h.addend, h.ttl, 0) for h in request.hits]
                return Counts(request.id, tuple(self.authority.add(hits)))
            return Pong(request.id)
        except Exception as exc:  # a bug: that request fails, the connection goes on
            log.exception("counting for a worker failed")
            return Failed(request.id, f"the parent could not count: {exc!r}")
