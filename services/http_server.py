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
  envoyproxy/ratelimit's ``/json``: 200 OK, 429 OVER_LIMIT, 400 bad request, 503 unavailable.
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


def build_app(view: OpsView) -> web.Application:
    app = web.Application()
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
            try:
                message = json_format.Parse(await request.text(), api.RateLimitRequest())
                result = await service.should_rate_limit(request_from_proto(message))
            except (json_format.ParseError, InvalidRequestError) as exc:
                return web.Response(status=400, text=f"{exc}\n")
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

    def __init__(self, view: OpsView, host: str, port: int) -> None:
        self._view = view
        self._runner: web.AppRunner | None = None
        self._host = host
        self._requested_port = port
        self.port = 0

    async def start(self) -> int:
        self._runner = web.AppRunner(build_app(self._view), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port, reuse_port=False)
        await site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[0][1]) if sockets else self._requested_port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
