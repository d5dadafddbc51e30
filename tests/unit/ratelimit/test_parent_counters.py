"""Counters owned by a parent process, served to workers over a Unix socket.

The wire format round trip, the server (``LeaseServer``) and the workers' clients
(``ParentLeaseAuthority``, ``ParentCounterStore``) over real sockets in a private
directory: grants never pass the limit whoever asks, failures are ``CounterStoreError``
within the timeout, a bad peer loses only its own connection.
"""

import asyncio
import random
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from services.clock import ManualClock
from services.ratelimit.lease_authority import Grant
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.leases import LeasePool
from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.parent_authority import (
    ParentChannel,
    ParentCounterStore,
    ParentLeaseAuthority,
)
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
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    read_frame,
)
from services.ratelimit.parent_server import LeaseServer
from services.ratelimit.store import CounterStoreError, Hit

NOW = 1_699_999_200.0  # a window start for minutes and hours
TIMEOUT = 0.05  # what "the parent does not answer" waits, in these tests


def body(frame: bytes) -> bytes:
    """A frame without its length prefix (checking the prefix on the way)."""
    (length,) = struct.unpack("!I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


@pytest.fixture(name="clock")
def fixture_clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture(name="server")
async def fixture_server(clock: ManualClock) -> AsyncIterator[LeaseServer]:
    server = LeaseServer(MemoryLeaseAuthority(clock))
    await server.start()
    yield server
    await server.close()


class TestProtocol:
    @pytest.mark.parametrize(
        "request_",
        [
            Acquire(1, "rl\x00domain\x00key=välue", 10, 100, 60),
            Acquire(0xFFFFFFFF, "", 0, 0, 0),
            Release(7, "k", 3),
            Increment(8, (CountHit("a", 1, 60), CountHit("ü" * 300, 0, 1), CountHit("a", 5, 60))),
            Increment(9, ()),
            Ping(10),
        ],
    )
    def test_requests_round_trip(self, request_: object) -> None:
        """Every request decodes to what was encoded."""
        assert decode_request(body(encode_request(request_))) == request_  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "reply",
        [
            Granted(1, Grant(7, 107, 59)),
            Granted(2, Grant(0, -1, 0)),
            Released(3, 4),
            Counts(4, (1, 2, 1 << 40)),
            Counts(5, ()),
            Pong(6),
            Failed(7, "the parent could not count: KeyError('ü')"),
        ],
    )
    def test_replies_round_trip(self, reply: object) -> None:
        """Every reply decodes to what was encoded."""
        assert decode_reply(body(encode_reply(reply))) == reply  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"\x01\x00", "shorter than its header"),
            (b"\x09\x00\x00\x00\x01", "unknown request op 0x09"),
            (b"\x01\x00\x00\x00\x01" + b"\x00" * 8, "ACQUIRE is too short"),
            (struct.pack("!BIq", 2, 1, 3) + b"\xff\xfe", "key is not valid UTF-8"),
            (struct.pack("!BII", 3, 1, 2) + struct.pack("!qqI", 1, 60, 1) + b"a", "inside a hit"),
            (struct.pack("!BII", 3, 1, 1) + struct.pack("!qqI", 1, 60, 9) + b"a", "inside a key"),
            (struct.pack("!BII", 3, 1, 0) + b"x", "bytes after its last hit"),
            (struct.pack("!BI", 4, 1) + b"x", "PING of 6 bytes"),
        ],
    )
    def test_malformed_requests_are_refused(self, raw: bytes, message: str) -> None:
        """A malformed body is a ProtocolError naming what is wrong."""
        with pytest.raises(ProtocolError, match=message):
            decode_request(raw)

    def test_malformed_replies_are_refused(self) -> None:
        """Counts that do not fill their body, and unknown ops, are refused."""
        with pytest.raises(ProtocolError, match="does not hold 2 counts"):
            decode_reply(struct.pack("!BII", 0x83, 1, 2) + struct.pack("!q", 1))
        with pytest.raises(ProtocolError, match="unknown reply op 0x01"):
            decode_reply(struct.pack("!BI", 1, 1))

    def test_what_cannot_be_sent_is_refused_before_sending(self) -> None:
        """A message over the bound, a number past 64 bits: ProtocolError, nothing written."""
        with pytest.raises(ProtocolError, match="over the 64-byte bound"):
            encode_request(Acquire(1, "k" * 100, 1, 1, 1), max_frame=64)
        with pytest.raises(ProtocolError, match="out of range"):
            encode_request(Acquire(1, "k", 1 << 64, 1, 1))
        with pytest.raises(ProtocolError, match="out of range"):
            encode_request(Acquire(1 << 32, "k", 1, 1, 1))

    async def test_frames_out_of_bounds_are_not_read(self) -> None:
        """A length of 0 or over the bound is refused before its body is read."""
        for length in (0, MAX_FRAME + 1):
            reader = asyncio.StreamReader()
            reader.feed_data(struct.pack("!I", length) + b"x" * 10)
            with pytest.raises(ProtocolError, match="bound is 1 to"):
                await read_frame(reader)


class TestExactCountsInTheAuthority:
    async def test_exact_hits_and_grants_share_a_counter(self, clock: ManualClock) -> None:
        """Exact hits go past the limit (as INCRBY does); grants see them, and stop."""
        authority = MemoryLeaseAuthority(clock)
        assert await authority.increment([Hit("k", 4, 60, 5), Hit("k", 0, 60, 5)]) == [4, 4]
        assert await authority.acquire("k", 3, 5, 60) == Grant(1, 5, 60)
        assert await authority.increment([Hit("k", 2, 60, 5)]) == [7]
        assert (await authority.acquire("k", 1, 5, 60)).granted == 0

    async def test_exact_counts_end_with_their_window(self, clock: ManualClock) -> None:
        """A counter made by an exact hit ends ttl seconds later; a look creates nothing."""
        authority = MemoryLeaseAuthority(clock)
        assert authority.add([Hit("look", 0, 60, 5)]) == [0]
        assert authority.count("look") == 0
        authority.add([Hit("k", 3, 30, 5)])
        clock.advance(30)
        assert authority.add([Hit("k", 1, 30, 5)]) == [1]


class TestServerAndClients:
    async def test_every_request_is_answered(self, server: LeaseServer) -> None:
        """Acquire, release, increment and ping, through the socket, from one dict."""
        leases = ParentLeaseAuthority(server.path)
        exact = ParentCounterStore(server.path)
        try:
            assert await leases.acquire("k", 7, 10, 60) == Grant(7, 7, 60)
            assert await leases.release("k", 2) == 2
            assert await leases.release("k", 0) == 0
            hits = [Hit("k", 1, 60, 10), Hit("other", 2, 60, 10), Hit("k", 1, 60, 10)]
            assert await exact.increment(hits) == [6, 2, 7]
            assert await exact.increment([]) == []
            await leases.ping()
            await exact.ping()
            assert server.authority.count("k") == 7
            assert server.connections == 2
        finally:
            await leases.close()
            await exact.close()

    async def test_the_socket_is_private_and_goes_away(self, clock: ManualClock) -> None:
        """The default socket is in a new 0700 directory, removed on close."""
        server = LeaseServer(MemoryLeaseAuthority(clock))
        path = await server.start()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(path.stat().st_mode)
        await server.close()
        assert not path.parent.exists()

    async def test_closing_ends_every_connection_cleanly(self, clock: ManualClock) -> None:
        """Workers connected when the parent closes see the end of the stream; the loop
        reports no error (a cancelled stream handler would be one)."""
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        server = LeaseServer(MemoryLeaseAuthority(clock))
        await server.start()
        clients = [ParentLeaseAuthority(server.path) for _ in range(3)]
        try:
            await asyncio.gather(*(c.ping() for c in clients))
            with capture_logs() as entries:
                await server.close()
                for _ in range(3):
                    await asyncio.sleep(0)
            assert server.connections == 0
            assert errors == []
            lost = [e for e in entries if e["event"] == "lost the connection to the parent process"]
            assert len(lost) == 3  # once per connection
        finally:
            loop.set_exception_handler(None)
            await asyncio.gather(*(c.close() for c in clients))

    async def test_concurrent_clients_never_get_more_than_the_limit(
        self, server: LeaseServer
    ) -> None:
        """Five workers asking at once, many requests in flight on each connection: the
        grants add up to exactly the limit, and every exact count is handed out once."""
        rng = random.Random(7)
        clients = [ParentLeaseAuthority(server.path) for _ in range(5)]
        stores = [ParentCounterStore(server.path) for _ in range(5)]
        try:
            asks = [(clients[i % 5], rng.randint(1, 9)) for i in range(300)]
            grants = await asyncio.gather(*(c.acquire("k", ask, 500, 60) for c, ask in asks))
            assert sum(g.granted for g in grants) == 500
            assert all(g.count <= 500 for g in grants)
            assert max(g.count for g in grants) == 500
            counts = await asyncio.gather(
                *(stores[i % 5].increment([Hit("exact", 1, 60, 10)]) for i in range(100))
            )
            assert sorted(c for [c] in counts) == list(range(1, 101))
        finally:
            await asyncio.gather(*(c.close() for c in [*clients, *stores]))

    async def test_leased_counters_in_several_workers_admit_exactly_the_limit(
        self, server: LeaseServer, clock: ManualClock
    ) -> None:
        """Three LeasedCounters (three workers) over the parent never admit more than the
        limit; what they admitted plus what they hold is the parent's count; once they give
        back what they hold, the rest is admitted: exactly the limit, whoever took it."""
        rng = random.Random(11)
        counters = [
            LeasedCounter(
                LeasePool(LeasePolicy(processes=3)), ParentLeaseAuthority(server.path), clock
            )
            for _ in range(3)
        ]
        hit = Hit("window", 1, 60, 200)

        async def burst(hits: int) -> int:
            counts = await asyncio.gather(
                *(counters[rng.choice((0, 0, 1, 2))].increment([hit]) for _ in range(hits))
            )
            return sum(1 for [count] in counts if count <= hit.limit)

        try:
            admitted = await burst(400)
            held = sum(c.pool.held("window") for c in counters)
            assert admitted + held == server.authority.count("window") <= 200
            await asyncio.gather(*(c.release_all() for c in counters))
            admitted += await burst(400)
            await asyncio.gather(*(c.release_all() for c in counters))
            assert admitted == server.authority.count("window") == 200
        finally:
            await asyncio.gather(*(c.close() for c in counters))


class TestFailures:
    async def test_no_parent_fails_at_once(self, tmp_path: Path) -> None:
        """Nothing listening on the path: CounterStoreError, for every kind of call."""
        leases = ParentLeaseAuthority(tmp_path / "none.sock", timeout=TIMEOUT)
        exact = ParentCounterStore(tmp_path / "none.sock", timeout=TIMEOUT)
        with pytest.raises(CounterStoreError, match="cannot reach the parent"):
            await leases.acquire("k", 1, 10, 60)
        with pytest.raises(CounterStoreError, match="cannot reach the parent"):
            await exact.increment([Hit("k", 1, 60, 10)])
        with pytest.raises(CounterStoreError):
            await leases.ping()
        await leases.close()
        await exact.close()

    async def test_a_parent_that_does_not_answer_times_out(self, tmp_path: Path) -> None:
        """A parent that accepts and never answers: CounterStoreError after the timeout."""
        accepted: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        path = tmp_path / "silent.sock"
        silent_server = await asyncio.start_unix_server(silent, path=str(path))
        leases = ParentLeaseAuthority(path, timeout=TIMEOUT)
        try:
            with pytest.raises(CounterStoreError, match=r"did not answer within 0\.05s"):
                await leases.acquire("k", 1, 10, 60)
            with pytest.raises(CounterStoreError, match="did not answer"):
                await leases.ping()
        finally:
            await leases.close()
            for writer in accepted:
                writer.close()
            silent_server.close()
            await silent_server.wait_closed()

    async def test_a_parent_going_away_fails_the_calls_waiting(self, tmp_path: Path) -> None:
        """Calls in flight when the connection closes fail at once, not at their timeout."""
        got_request = asyncio.Event()

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_frame(reader)
            got_request.set()
            writer.close()

        path = tmp_path / "hangup.sock"
        hangup_server = await asyncio.start_unix_server(hang_up, path=str(path))
        leases = ParentLeaseAuthority(path, timeout=60.0)  # the test's own timeout would fire
        try:
            with pytest.raises(CounterStoreError, match="closed the connection"):
                await leases.acquire("k", 1, 10, 60)
            assert got_request.is_set()
        finally:
            await leases.close()
            hangup_server.close()
            await hangup_server.wait_closed()

    async def test_a_late_reply_is_dropped_and_the_connection_goes_on(self, tmp_path: Path) -> None:
        """A reply that comes after its call gave up is ignored; the next call works."""
        release_first = asyncio.Event()

        async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = decode_request(await read_frame(reader))
            await release_first.wait()
            writer.write(encode_reply(Granted(first.id, Grant(1, 1, 60))))
            second = decode_request(await read_frame(reader))
            writer.write(encode_reply(Granted(second.id, Grant(2, 3, 60))))
            await reader.read()  # until the client closes
            writer.close()

        path = tmp_path / "slow.sock"
        slow_server = await asyncio.start_unix_server(slow_first, path=str(path))
        leases = ParentLeaseAuthority(path, timeout=TIMEOUT)
        try:
            with pytest.raises(CounterStoreError, match="did not answer"):
                await leases.acquire("k", 1, 10, 60)
            release_first.set()
            leases.channel._timeout = 60.0
            assert await leases.acquire("k", 2, 10, 60) == Grant(2, 3, 60)
        finally:
            await leases.close()
            slow_server.close()
            await slow_server.wait_closed()

    async def test_reconnects_after_the_parent_restarts(self, clock: ManualClock) -> None:
        """Parent gone: calls fail; parent back on the same path: the next call works."""
        authority = MemoryLeaseAuthority(clock)
        server = LeaseServer(authority)
        path = await server.start()
        leases = ParentLeaseAuthority(path, timeout=TIMEOUT)
        restarted = LeaseServer(authority, path)
        try:
            assert (await leases.acquire("k", 4, 10, 60)).granted == 4
            await server.close()
            with pytest.raises(CounterStoreError):
                await leases.acquire("k", 4, 10, 60)
            path.parent.mkdir(mode=0o700)
            await restarted.start()
            assert await leases.acquire("k", 4, 10, 60) == Grant(4, 8, 60)
        finally:
            await leases.close()
            await restarted.close()
            path.parent.rmdir()

    async def test_a_failing_authority_fails_that_request_only(self, clock: ManualClock) -> None:
        """A bug in the parent is a FAILED reply (CounterStoreError); the link stays up."""

        class Broken(MemoryLeaseAuthority):
            def grant(self, key: str, ask: int, limit: int, ttl: int) -> Grant:
                if key == "boom":
                    raise KeyError(key)
                return super().grant(key, ask, limit, ttl)

        server = LeaseServer(Broken(clock))
        await server.start()
        leases = ParentLeaseAuthority(server.path)
        try:
            with capture_logs() as entries, pytest.raises(CounterStoreError, match="KeyError"):
                await leases.acquire("boom", 1, 10, 60)
            assert [e["event"] for e in entries] == ["counting for a worker failed"]
            assert (await leases.acquire("fine", 1, 10, 60)).granted == 1
            assert server.connections == 1
        finally:
            await leases.close()
            await server.close()

    @pytest.mark.parametrize(
        "garbage",
        [
            struct.pack("!I", 5) + b"\x42\x00\x00\x00\x01",  # an unknown op
            struct.pack("!I", MAX_FRAME + 1),  # a frame over the bound
            struct.pack("!I", 0),  # an empty frame
        ],
    )
    async def test_a_malformed_message_closes_that_connection_only(
        self, server: LeaseServer, garbage: bytes
    ) -> None:
        """The bad peer is disconnected with one warning; other workers carry on."""
        good = ParentLeaseAuthority(server.path)
        try:
            assert (await good.acquire("k", 1, 10, 60)).granted == 1
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            with capture_logs() as entries:
                writer.write(garbage + encode_request(Ping(2)))
                assert await reader.read() == b""  # closed, the ping never answered
            writer.close()
            assert [(e["event"], e["log_level"]) for e in entries] == [
                ("malformed message from a worker: closing its connection", "warning")
            ]
            assert (await good.acquire("k", 1, 10, 60)).granted == 1
        finally:
            await good.close()

    async def test_a_closed_client_refuses_calls(self, server: LeaseServer) -> None:
        """After close, calls fail without reconnecting."""
        channel = ParentChannel(server.path)
        assert isinstance(await channel.call(Ping(channel.next_id())), Pong)
        await channel.close()
        with pytest.raises(CounterStoreError, match="is closed"):
            await channel.call(Ping(channel.next_id()))

    async def test_a_request_over_the_bound_fails_alone(self, server: LeaseServer) -> None:
        """A key too long to send is that call's CounterStoreError; the link is untouched."""
        leases = ParentLeaseAuthority(server.path)
        try:
            assert (await leases.acquire("k", 1, 10, 60)).granted == 1
            with pytest.raises(CounterStoreError, match="over the"):
                await leases.acquire("k" * (MAX_FRAME + 1), 1, 10, 60)
            assert (await leases.acquire("k", 1, 10, 60)).granted == 1
            assert server.connections == 1
        finally:
            await leases.close()
