"""Who may listen on a gRPC port: one process alone, or the workers of one parent together."""

from collections.abc import AsyncIterator, Callable

import pytest

from services.grpc_server import ServerOptions, ThreadedGrpcServer

Make = Callable[..., ThreadedGrpcServer]


@pytest.fixture(name="make")
async def fixture_make() -> AsyncIterator[Make]:
    made: list[ThreadedGrpcServer] = []

    def make(
        port: int, *, reuse_port: bool = False, extra: tuple[int, ...] = ()
    ) -> ThreadedGrpcServer:
        options = ServerOptions(host="127.0.0.1", reuse_port=reuse_port, threads=1)
        server = ThreadedGrpcServer("ratelimit", port, options, [], [], extra_ports=extra)
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop(0)


async def test_a_second_server_on_a_busy_port_fails(make: Make) -> None:
    """Without --workers, SO_REUSEPORT is off: a port in use is an error, never shared."""
    port = await make(0).start()
    with pytest.raises(OSError, match=f"ratelimit: cannot listen on 127.0.0.1:{port}"):
        await make(port).start()


async def test_workers_share_the_public_port_and_keep_their_own(make: Make) -> None:
    """With reuse_port, two servers bind one port, each with an extra port of its own."""
    first = make(0, reuse_port=True)
    port = await first.start()
    second = make(port, reuse_port=True, extra=(0,))
    assert await second.start() == port
    assert len(second.extra_ports) == 1 and second.extra_ports[0] not in (0, port)
