"""The wire format between worker processes and the parent that owns their counters.

Without Redis, ``mixerless serve --workers N`` keeps every counter in the parent
process (``memory_authority.MemoryLeaseAuthority``); workers count exactly and take
leases over a Unix domain socket (``parent_server.LeaseServer`` answers,
``parent_authority`` asks). This module is the format alone: pure, no I/O but
``read_frame``.

**Frames.** Every message is a 4-byte big-endian length ``n`` (``1 <= n <= max_frame``,
``MAX_FRAME`` by default) and ``n`` bytes of body. A body starts with a 1-byte op and a
4-byte request id (big-endian, chosen by the client); the reply to a request carries
its id, so one connection carries many requests at once and replies may come in any
order. Integers are signed 64-bit big-endian; keys are UTF-8.

=========  ====  =======================================================================
request    op    after op and id
=========  ====  =======================================================================
ACQUIRE    0x01  ask, limit, ttl (3 x i64), then the key (the rest of the body)
RELEASE    0x02  unused (i64), then the key
INCREMENT  0x03  n (u32), then n hits: addend, ttl (2 x i64), key length (u32), key
PING       0x04  nothing
=========  ====  =======================================================================

=========  ====  =======================================================================
reply      op    after op and id
=========  ====  =======================================================================
GRANT      0x81  granted, count, ttl (3 x i64): ``lease_authority.Grant``
RELEASED   0x82  returned (i64)
COUNTS     0x83  n (u32), then n x i64: each counter after its hit
PONG       0x84  nothing
FAILED     0xFF  a UTF-8 message: the parent could not answer this request
=========  ====  =======================================================================

Anything else (an unknown op, a short or long body, a bad key, a frame over the bound)
is a ``ProtocolError``; whoever reads it closes that connection.
"""

import asyncio
import struct
from dataclasses import dataclass

from services.ratelimit.lease_authority import Grant

MAX_FRAME = 1 << 20  # larger than any counter key Envoy's header limits allow
"""The largest body accepted by default, in bytes."""

ACQUIRE, RELEASE, INCREMENT, PING = 0x01, 0x02, 0x03, 0x04
GRANT, RELEASED, COUNTS, PONG, FAILED = 0x81, 0x82, 0x83, 0x84, 0xFF

_LENGTH = struct.Struct("!I")
_HEAD = struct.Struct("!BI")  # op, request id
_THREE = struct.Struct("!BIqqq")
_ONE = struct.Struct("!BIq")
_COUNT = struct.Struct("!BII")
_HIT = struct.Struct("!qqI")


class ProtocolError(ValueError):
    """A message that does not follow this format (or would not fit in a frame)."""


# --- messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    id: int
    key: str
    ask: int
    limit: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Release:
    id: int
    key: str
    unused: int


@dataclass(frozen=True, slots=True)
class CountHit:
    """One hit of an INCREMENT: add ``addend`` to ``key``, whose window ends in ``ttl``."""

    key: str
    addend: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Increment:
    id: int
    hits: tuple[CountHit, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    id: int


Request = Acquire | Release | Increment | Ping


@dataclass(frozen=True, slots=True)
class Granted:
    id: int
    grant: Grant


@dataclass(frozen=True, slots=True)
class Released:
    id: int
    returned: int


@dataclass(frozen=True, slots=True)
class Counts:
    id: int
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pong:
    id: int


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    message: str


Reply = Granted | Released | Counts | Pong | Failed


# --- encoding --------------------------------------------------------------------------


def _frame(body: bytes, max_frame: int) -> bytes:
    if len(body) > max_frame:
        raise ProtocolError(f"message of {len(body)} bytes is over the {max_frame}-byte bound")
    return _LENGTH.pack(len(body)) + body


def _key(key: str) -> bytes:
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"key is not valid UTF-8: {exc}") from exc


def _pack(packer: struct.Struct, *values: int) -> bytes:
    try:
        return packer.pack(*values)
    except struct.error as exc:  # a number out of range
        raise ProtocolError(f"value out of range: {exc}") from exc


def encode_request(request: Request, max_frame: int = MAX_FRAME) -> bytes:
    """The frame for ``request``; ``ProtocolError`` if it cannot be sent."""
    if isinstance(request, Acquire):
        head = _pack(_THREE, ACQUIRE, request.id, request.ask, request.limit, request.ttl)
        return _frame(head + _key(request.key), max_frame)
    if isinstance(request, Release):
        return _frame(
            _pack(_ONE, RELEASE, request.id, request.unused) + _key(request.key), max_frame
        )
    if isinstance(request, Increment):
        parts = [_pack(_COUNT, INCREMENT, request.id, len(request.hits))]
        for hit in request.hits:
            key = _key(hit.key)
            parts.append(_pack(_HIT, hit.addend, hit.ttl, len(key)))
            parts.append(key)
        return _frame(b"".join(parts), max_frame)
    return _frame(_pack(_HEAD, PING, request.id), max_frame)


def encode_reply(reply: Reply, max_frame: int = MAX_FRAME) -> bytes:
    """The frame for ``reply``; ``ProtocolError`` if it cannot be sent."""
    if isinstance(reply, Granted):
        grant = reply.grant
        return _frame(
            _pack(_THREE, GRANT, reply.id, grant.granted, grant.count, grant.ttl), max_frame
        )
    if isinstance(reply, Released):
        return _frame(_pack(_ONE, RELEASED, reply.id, reply.returned), max_frame)
    if isinstance(reply, Counts):
        head = _pack(_COUNT, COUNTS, reply.id, len(reply.counts))
        try:
            values = struct.pack(f"!{len(reply.counts)}q", *reply.counts)
        except struct.error as exc:
            raise ProtocolError(f"value out of range: {exc}") from exc
        return _frame(head + values, max_frame)
    if isinstance(reply, Pong):
        return _frame(_pack(_HEAD, PONG, reply.id), max_frame)
    message = reply.message.encode("utf-8", "replace")[: max_frame - _HEAD.size]
    return _frame(_pack(_HEAD, FAILED, reply.id) + message, max_frame)


# --- decoding --------------------------------------------------------------------------


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8") from exc


def _fixed(body: bytes, packer: struct.Struct, what: str) -> tuple[int, ...]:
    if len(body) != packer.size:
        raise ProtocolError(f"{what} of {len(body)} bytes, expected {packer.size}")
    return packer.unpack(body)


def _head(body: bytes) -> tuple[int, int]:
    if len(body) < _HEAD.size:
        raise ProtocolError(f"message of {len(body)} bytes is shorter than its header")
    op, request_id = _HEAD.unpack_from(body)
    return op, request_id


def decode_request(body: bytes) -> Request:
    """The request in a frame's body; ``ProtocolError`` if it is malformed."""
    op, request_id = _head(body)
    if op == ACQUIRE:
        if len(body) < _THREE.size:
            raise ProtocolError("ACQUIRE is too short")
        _, _, ask, limit, ttl = _THREE.unpack_from(body)
        return Acquire(request_id, _text(body[_THREE.size :], "key"), ask, limit, ttl)
    if op == RELEASE:
        if len(body) < _ONE.size:
            raise ProtocolError("RELEASE is too short")
        _, _, unused = _ONE.unpack_from(body)
        return Release(request_id, _text(body[_ONE.size :], "key"), unused)
    if op == INCREMENT:
        return Increment(request_id, _hits(body))
    if op == PING:
        _fixed(body, _HEAD, "PING")
        return Ping(request_id)
    raise ProtocolError(f"unknown request op 0x{op:02x}")


def _hits(body: bytes) -> tuple[CountHit, ...]:
    if len(body) < _COUNT.size:
        raise ProtocolError("INCREMENT is too short")
    _, _, count = _COUNT.unpack_from(body)
    offset = _COUNT.size
    hits: list[CountHit] = []
    for _ in range(count):
        if len(body) < offset + _HIT.size:
            raise ProtocolError("INCREMENT ends inside a hit")
        addend, ttl, length = _HIT.unpack_from(body, offset)
        offset += _HIT.size
        if len(body) < offset + length:
            raise ProtocolError("INCREMENT ends inside a key")
        hits.append(CountHit(_text(body[offset : offset + length], "key"), addend, ttl))
        offset += length
    if offset != len(body):
        raise ProtocolError("INCREMENT has bytes after its last hit")
    return tuple(hits)


def decode_reply(body: bytes) -> Reply:
    """The reply in a frame's body; ``ProtocolError`` if it is malformed."""
    op, request_id = _head(body)
    if op == GRANT:
        _, _, granted, count, ttl = _fixed(body, _THREE, "GRANT")
        return Granted(request_id, Grant(granted, count, ttl))
    if op == RELEASED:
        return Released(request_id, _fixed(body, _ONE, "RELEASED")[2])
    if op == COUNTS:
        if len(body) < _COUNT.size:
            raise ProtocolError("COUNTS is too short")
        _, _, count = _COUNT.unpack_from(body)
        if len(body) != _COUNT.size + 8 * count:
            raise ProtocolError(f"COUNTS of {len(body)} bytes does not hold {count} counts")
        return Counts(request_id, struct.unpack_from(f"!{count}q", body, _COUNT.size))
    if op == PONG:
        _fixed(body, _HEAD, "PONG")
        return Pong(request_id)
    if op == FAILED:
        return Failed(request_id, body[_HEAD.size :].decode("utf-8", "replace"))
    raise ProtocolError(f"unknown reply op 0x{op:02x}")


async def read_frame(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> bytes:
    """The next frame's body. ``asyncio.IncompleteReadError`` at the end of the stream
    (with nothing read when it ended between frames), ``ProtocolError`` for a length of
    0 or over ``max_frame`` (the body is not read)."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if not 0 < length <= max_frame:
        raise ProtocolError(f"frame of {length} bytes (the bound is 1 to {max_frame})")
    return await reader.readexactly(length)
