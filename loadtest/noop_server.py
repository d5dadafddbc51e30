"""No-op Envoy services (grpc.aio + uvloop): the ceiling for calibrating this machine.

``--service rls`` answers every ShouldRateLimit with OK (one OK status per descriptor),
``--service authz`` every Check with OK, without looking at the request. So
``rls_load.py --server noop`` and ``check_load.py --scenario noop`` measure grpcio's
per-RPC cost plus the load generator, on the same cores and at the same moment as
mixerless. It is the "uvloop, always OK" server of /work/shared/reference/performance.md.

    .venv/bin/python loadtest/noop_server.py --service rls --port 18091
    .venv/bin/python loadtest/noop_server.py --service authz --port 18092
"""

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop

from services import envoy_api as api


class NoopRateLimitServicer(api.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ok = api.RateLimitResponse.Code.OK
        return api.RateLimitResponse(
            overall_code=ok,
            statuses=[api.RateLimitResponse.DescriptorStatus(code=ok) for _ in request.descriptors],
        )


class NoopAuthorizationServicer(api.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = api.CheckResponse()
        response.status.code = 0
        response.ok_response.SetInParent()
        return response


def _register(service: str, server: grpc.aio.Server) -> None:
    if service == "rls":
        api.add_RateLimitServiceServicer_to_server(NoopRateLimitServicer(), server)
    else:
        api.add_AuthorizationServicer_to_server(NoopAuthorizationServicer(), server)


async def serve(service: str, host: str, port: int) -> None:
    server = grpc.aio.server()
    _register(service, server)
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
    parser.add_argument("--service", choices=("rls", "authz"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.service, args.host, args.port))


if __name__ == "__main__":
    main()
