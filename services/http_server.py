"""The HTTP side port: health, readiness, metrics, the debug view, and ``/json``.

* ``GET /healthz`` (or ``/healthcheck``, as envoyproxy/ratelimit names it): 200 while
  the process runs, 503 once shutting down.
* ``GET /readyz``: 200 when a policy set is serving and every backend answers; the
  body names the serving policy digest and each check.
* ``GET /metrics``: Prometheus text format (a parent of workers: theirs and its own,
  merged; ``OpsView.exposition``).
* ``GET /debug/config``: the serving policy set (digest, files, limits) and the last
  rejected change with its errors.
* ``POST /json``: a ``RateLimitRequest`` in protobuf JSON, answered like
  envoyproxy/ratelimit's ``/json``: 200 OK, 429 OVER_LIMIT, 400 bad request (JSON that is
  not a request, or not UTF-8), 413 over ``max_body_bytes``, 408 when the body does not
  arrive within ``body_timeout``, 503 unavailable.

Clients cannot hold the port (``HttpLimits``): a connection must complete a request
within ``idle_timeout`` of opening (and of its previous answer), and at most
``max_connections`` are open at once; one more is closed as soon as it is accepted.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from services import envoy_api as api
from services.authz.config import describe_authz
from services.catalog.state import PolicyState
from services.metrics import Metrics
from services.ratelimit.config import describe_config
from services.ratelimit.model import Code
from services.ratelimit.service import InvalidRequestError, RateLimitService, UnavailableError
from services.ratelimit.servicer import request_from_proto, response_to_proto


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may hold of the HTTP port."""

    idle_timeout: float = 15.0  # seconds a connection may go without a complete request
    body_timeout: float = 10.0  # seconds a /json body may take to arrive
    max_body_bytes: int = 1 << 20  # a /json body (aiohttp's default cap, stated here)
    max_connections: int = 256  # open at once; probes and scrapes need a handful


ReadinessCheck = Callable[[], Awaitable[None]]
Exposition = Callable[[], Awaitable[bytes]]


@dataclass
class OpsView:
    """What the HTTP port reports on."""

    state: PolicyState
    metrics: Metrics
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    ratelimit: RateLimitService | None = None
    check_timeout: float = 1.0
    stopping: bool = False
    debug: dict[str, Callable[[], object]] = field(default_factory=dict)  # more /debug/config
    exposition: Exposition | None = None  # /metrics, when not just ``metrics``'s


def build_app(view: OpsView, limits: HttpLimits = HttpLimits()) -> web.Application:
    app = web.Application(client_max_size=limits.max_body_bytes)
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    @routes.get("/healthcheck")  # envoyproxy/ratelimit's name for the same probe
    async def healthz(_: web.Request) -> web.Response:
        if view.stopping:
            return web.Response(status=503, text="shutting down\n")
        return web.Response(text="OK\n")

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        current = view.state.current
        checks: dict[str, str] = {"policy": "ok" if current else "no policy set loaded"}
        for name, check in view.checks.items():
            try:
                await asyncio.wait_for(check(), view.check_timeout)
                checks[name] = "ok"
            except Exception as exc:  # any failure means "not ready", with its reason
                checks[name] = f"failed: {exc or type(exc).__name__}"
        ready = not view.stopping and all(v == "ok" for v in checks.values())
        body = {
            "ready": ready,
            "policy_digest": current.digest if current else None,
            "checks": checks,
        }
        return web.json_response(body, status=200 if ready else 503)

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        exposition = view.exposition
        return web.Response(
            body=view.metrics.exposition() if exposition is None else await exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    @routes.get("/debug/config")
    async def debug_config(_: web.Request) -> web.Response:
        current = view.state.current
        rejection = view.state.last_rejection
        body: dict[str, Any] = {
            "digest": current.digest if current else None,
            "loaded_at": view.state.loaded_at,
            "files": list(current.files) if current else [],
            "ratelimit": describe_config(current.ratelimit) if current else [],
            "authz": describe_authz(current.authz) if current else None,
            "last_rejection": (
                {"at": rejection.at, "errors": list(rejection.errors)} if rejection else None
            ),
            "gateways": [g.name for g in current.xds.gateways] if current else [],
        }
        for name, section in view.debug.items():
            body[name] = section()
        return web.json_response(body, dumps=lambda o: json.dumps(o, indent=2))

    if view.ratelimit is not None:
        service = view.ratelimit

        @routes.post("/json")
        async def ratelimit_json(request: web.Request) -> web.Response:
            length = request.content_length
            too_large = f"body over {limits.max_body_bytes} bytes\n"
            if length is not None and length > limits.max_body_bytes:
                return web.Response(status=413, text=too_large)
            try:
                body = await asyncio.wait_for(request.read(), limits.body_timeout)
            except TimeoutError:
                return web.Response(status=408, text="the body did not arrive in time\n")
            except web.HTTPRequestEntityTooLarge:
                return web.Response(status=413, text=too_large)
            try:
                message = json_format.Parse(body.decode("utf-8"), api.RateLimitRequest())
                result = await service.should_rate_limit(request_from_proto(message))
            except UnicodeDecodeError:
                return web.Response(status=400, text="the body is not UTF-8\n")
            except (json_format.ParseError, InvalidRequestError, RecursionError) as exc:
                return web.Response(status=400, text=f"{str(exc)[:500] or 'nested too deeply'}\n")
            except UnavailableError as exc:
                return web.Response(status=503, text=f"{exc}\n")
            status = 429 if result.overall is Code.OVER_LIMIT else 200
            return web.Response(
                status=status,
                text=json_format.MessageToJson(response_to_proto(result), indent=None),
                content_type="application/json",
            )

    app.add_routes(routes)
    return app


class HttpServer:
    """Runs ``build_app(view)`` on ``host:port``; ``port`` is known after ``start``.

    The app is built from the view as it is at ``start``."""

    def __init__(
        self, view: OpsView, host: str, port: int, limits: HttpLimits = HttpLimits()
    ) -> None:
        self._view = view
        self._limits = limits
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._host = host
        self._requested_port = port
        self.port = 0

    async def start(self) -> int:
        # keepalive_timeout is also the deadline of a connection's first request (aiohttp
        # arms it when the connection opens, and bytes of an unfinished request do not
        # move it): half-open and trickling clients are closed after idle_timeout.
        limits = self._limits
        self._runner = web.AppRunner(
            build_app(self._view, limits), access_log=None, keepalive_timeout=limits.idle_timeout
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= limits.max_connections:
                return _Refused()
            return server()

        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            protocol, self._host or None, self._requested_port, reuse_address=True
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()


class _Refused(asyncio.Protocol):
    """A connection over ``max_connections``: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
