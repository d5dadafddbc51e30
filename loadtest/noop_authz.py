"""A no-op ext_authz server (grpc.aio + uvloop): the ceiling for ``check_load.py``.

It answers every ``envoy.service.auth.v3.Authorization/Check`` with an OK status and
an empty ``ok_response``, without looking at the request (grpcio still parses it), so
``check_load.py --scenario noop`` measures grpcio's per-RPC cost plus the load
generator, on the same cores and at the same moment as mixerless. It is the
authz twin of ``noop_rls.py`` and of the reference's "uvloop, always OK" server.

    .venv/bin/python loadtest/noop_authz.py --port 18092
"""

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop

from services import envoy_api as api


class NoopAuthorizationServicer(api.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = api.CheckResponse()
        response.status.code = 0
        response.ok_response.SetInParent()
        return response


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    api.add_AuthorizationServicer_to_server(NoopAuthorizationServicer(), server)
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
