"""No-op Envoy services: the ceiling of a Python hop, for calibrating this machine.

``--service rls`` answers every ShouldRateLimit with OK (one OK status per descriptor),
``--service authz`` every Check with OK, without looking at the request. So
``rls_load.py --server noop`` and ``check_load.py --scenario noop`` measure grpcio's
per-RPC cost plus the load generator, on the same cores and at the same moment as
mixerless. Two flavours: ``--flavour aio`` (default) is grpc.aio on uvloop;
``--flavour sync`` is grpcio's thread-pool server (``--threads``, default 4), whose
per-call cost is lower for short handlers.

    .venv/bin/python loadtest/noop_server.py --service rls --port 18091
    .venv/bin/python loadtest/noop_server.py --service authz --port 18092 --flavour sync
"""

import argparse
import asyncio
import signal
import threading
from concurrent import futures
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


def _allow() -> Any:
    response = api.CheckResponse()
    response.status.code = 0
    response.ok_response.SetInParent()
    return response


class NoopAuthorizationServicer(api.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _allow()


class SyncNoopRateLimitServicer(api.RateLimitServiceServicer):  # type: ignore[misc]
    def ShouldRateLimit(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok = api.RateLimitResponse.Code.OK
        return api.RateLimitResponse(
            overall_code=ok,
            statuses=[api.RateLimitResponse.DescriptorStatus(code=ok) for _ in request.descriptors],
        )


class SyncNoopAuthorizationServicer(api.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _allow()


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


def serve_sync(service: str, host: str, port: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    if service == "rls":
        api.add_RateLimitServiceServicer_to_server(SyncNoopRateLimitServicer(), server)
    else:
        api.add_AuthorizationServicer_to_server(SyncNoopAuthorizationServicer(), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0).wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=("rls", "authz"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--flavour", choices=("aio", "sync"), default="aio")
    parser.add_argument("--threads", type=int, default=4, help="sync flavour: worker threads")
    args = parser.parse_args()
    if args.flavour == "sync":
        serve_sync(args.service, args.host, args.port, args.threads)
    else:
        uvloop.run(serve(args.service, args.host, args.port))


if __name__ == "__main__":
    main()
