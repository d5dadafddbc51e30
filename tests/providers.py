"""Real, small extension providers for tests: an ext_authz gRPC server and an HTTP one.

Both listen on 127.0.0.1 (port 0, so any free port), record what they were asked, and
answer what the test says: set ``reply`` (and ``delay`` to make them slow) before the
call. ``async with GrpcAuthzServer() as server:`` starts and stops one.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import grpc
from google.protobuf import struct_pb2

from services import envoy_api as api

# --- gRPC -----------------------------------------------------------------------------------


def header_option(
    name: str, value: str, *, append: bool | None = None, action: int | None = None
) -> Any:
    """A ``HeaderValueOption``; ``append`` (a BoolValue) and ``action`` only when given."""
    option = api.HeaderValueOption(header=api.HeaderValue(key=name, value=value))
    if append is not None:
        option.append.value = append
    if action is not None:
        option.append_action = action
    return option


def allow(
    headers: Sequence[Any] = (),
    *,
    remove: Sequence[str] = (),
    response_headers: Sequence[Any] = (),
    metadata: dict[str, Any] | None = None,
) -> Any:
    """An OK ``CheckResponse``; header items are ``(name, value)`` or ``HeaderValueOption``."""
    response = api.CheckResponse()
    response.status.code = 0
    ok = response.ok_response
    ok.headers.extend(_options(headers))
    ok.headers_to_remove.extend(remove)
    ok.response_headers_to_add.extend(_options(response_headers))
    if metadata is not None:
        struct = struct_pb2.Struct()
        struct.update(metadata)
        response.dynamic_metadata.CopyFrom(struct)
    return response


def deny(status: int | None = None, body: str = "", headers: Sequence[Any] = ()) -> Any:
    """A PERMISSION_DENIED ``CheckResponse`` with a ``denied_response``."""
    response = api.CheckResponse()
    response.status.code = grpc.StatusCode.PERMISSION_DENIED.value[0]
    denied = response.denied_response
    if status is not None:
        denied.status.code = status
    denied.body = body
    denied.headers.extend(_options(headers))
    return response


def _options(headers: Sequence[Any]) -> list[Any]:
    return [h if not isinstance(h, tuple) else header_option(*h) for h in headers]


class GrpcFailure(Exception):
    """Make ``GrpcAuthzServer`` end the call with this gRPC status instead of answering."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GrpcAuthzServer(api.AuthorizationServicer):  # type: ignore[misc]
    """An ``envoy.service.auth.v3.Authorization`` server answering ``reply``."""

    def __init__(self) -> None:
        self.reply: Any = allow()  # a CheckResponse, a GrpcFailure, or a callable of the request
        self.delay = 0.0
        self.requests: list[Any] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.reply(request) if callable(self.reply) else self.reply
        if isinstance(reply, GrpcFailure):
            await context.abort(reply.code, reply.details)
        return reply

    async def start(self) -> int:
        self._server = grpc.aio.server()
        api.add_AuthorizationServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def __aenter__(self) -> "GrpcAuthzServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    """What ``HttpAuthzServer`` answers: status, headers (repeats allowed) and body."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""


@dataclass(frozen=True)
class SeenRequest:
    """One request the HTTP provider received, as it came on the wire."""

    method: str
    target: str  # path and query, undecoded
    headers: list[tuple[str, str]]  # lower-case names, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return ",".join(values) if values else None

    @property
    def names(self) -> set[str]:
        return {n for n, _ in self.headers}


@dataclass
class HttpAuthzServer:
    """An ext_authz HTTP server: every path, every method, answering ``reply``."""

    reply: HttpReply | Callable[[SeenRequest], HttpReply] = field(default_factory=HttpReply)
    delay: float = 0.0
    requests: list[SeenRequest] = field(default_factory=list)
    port: int = 0
    _runner: aiohttp.web.AppRunner | None = None

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        seen = SeenRequest(
            request.method,
            request.raw_path,
            [(n.decode().lower(), v.decode()) for n, v in request.raw_headers],
            await request.read(),
        )
        self.requests.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.reply(seen) if callable(self.reply) else self.reply
        response = aiohttp.web.Response(status=reply.status, body=reply.body)
        for name, value in reply.headers:
            response.headers.add(name, value)
        return response

    async def start(self) -> int:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "HttpAuthzServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
