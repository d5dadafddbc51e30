"""The HTTP port against hostile clients, over real sockets: bad /json bodies are 400 or
413 at once, slow ones 408, half-open connections are closed, connections are capped."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.catalog.state import PolicyState
from services.clock import ManualClock
from services.http_server import HttpLimits, HttpServer, OpsView
from services.metrics import Metrics
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.service import RateLimitOptions, RateLimitService

LIMITS = HttpLimits(idle_timeout=0.5, body_timeout=0.5, max_body_bytes=1024, max_connections=8)


@pytest.fixture(name="port")
async def fixture_port() -> AsyncIterator[int]:
    clock, metrics = ManualClock(), Metrics()
    service = RateLimitService(
        lambda: None, InMemoryCounterStore(clock), clock, metrics, RateLimitOptions()
    )
    server = HttpServer(OpsView(PolicyState(), metrics, ratelimit=service), "127.0.0.1", 0, LIMITS)
    await server.start()
    yield server.port
    await server.stop()


async def exchange(port: int, raw: bytes, *, then_wait: float = 5.0) -> bytes:
    """Send ``raw`` on a new connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), then_wait)
    finally:
        writer.close()


async def status_line(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; the first line of the answer (the server may keep
    the connection to drain a body it did not read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.readline(), 5.0)
    finally:
        writer.close()


def post_json(body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = f"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


async def test_invalid_utf8_body_is_400(port: int) -> None:
    """A /json body that is not UTF-8 is 400 with a reason, not a 500 with a traceback."""
    answer = await exchange(port, post_json(b'{"domain": "\xff\xfe"}'))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b"the body is not UTF-8\n")


async def test_announced_huge_body_is_413_at_once(port: int) -> None:
    """A body announced over the cap is refused before any of it is read."""
    started = time.monotonic()
    answer = await status_line(port, post_json(b"{", length=50_000_000))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert time.monotonic() - started < 1.0


async def test_body_that_never_arrives_is_408(port: int) -> None:
    """A body announced and not sent is answered 408 after body_timeout."""
    answer = await status_line(port, post_json(b"{", length=100))
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_half_open_connections_are_closed(port: int) -> None:
    """A connection that sends nothing, or a request head that never ends, is closed
    after idle_timeout."""
    started = time.monotonic()
    silent, trickling = await asyncio.gather(
        exchange(port, b""), exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    )
    assert silent == trickling == b""
    assert time.monotonic() - started < 3.0


async def test_connections_past_the_cap_are_closed_and_the_port_still_answers(
    port: int,
) -> None:
    """With max_connections held open, one more is closed at once; once they go, probes
    are answered again."""
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    await asyncio.sleep(0.05)
    refused = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", then_wait=2.0)
    assert refused == b""
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.1)
    answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
