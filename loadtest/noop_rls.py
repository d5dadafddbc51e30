"""A no-op RateLimitService (grpc.aio + uvloop): the ceiling for calibrating this machine.

It answers every ShouldRateLimit with OK and one OK status per descriptor, without
counting anything, so ``rls_load.py --server noop`` measures grpcio's per-RPC cost
plus the load generator, on the same cores and at the same moment as mixerless.
It is the "uvloop, always OK" server of /work/shared/reference/performance.md.

    .venv/bin/python loadtest/noop_rls.py --port 18091
"""

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop

from services import envoy_api as api


class NoopServicer(api.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ok = api.RateLimitResponse.Code.OK
        return api.RateLimitResponse(
            overall_code=ok,
            statuses=[api.RateLimitResponse.DescriptorStatus(code=ok) for _ in request.descriptors],
        )


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    api.add_RateLimitServiceServicer_to_server(NoopServicer(), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
