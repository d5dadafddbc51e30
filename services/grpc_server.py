"""gRPC server plumbing shared by every service: written once, used by all.

Each server gets ``grpc.health.v1`` (NOT_SERVING until told otherwise), server
reflection, keepalive settings that accept Envoy's pings, bounded message sizes,
and a graceful stop that lets in-flight calls finish.

Two flavours, one interface: ``GrpcServer`` (grpc.aio, for the xDS streams, which live
long and wait on the loop) and ``ThreadedGrpcServer`` (grpcio's sync server on a small
thread pool, for Check and ShouldRateLimit: one unary call per request, where its lower
per-call cost decides throughput; ``docs/architecture.md``, "The gRPC servers").
"""

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Transport settings common to every gRPC server."""

    host: str = "0.0.0.0"
    max_message_bytes: int = 4 * 1024 * 1024
    # Envoy may ping as often as every few seconds (http2_protocol_options.connection_keepalive);
    # never answer a ping with GOAWAY.
    min_ping_interval_ms: int = 1_000
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    threads: int = 4  # per threaded server; more threads only contend for the GIL
    # Off: a second server on a busy port must fail, not share it. On only in the worker
    # processes of one ``mixerless serve --workers N``, which share the public ports.
    reuse_port: bool = False

    def channel_args(self) -> list[tuple[str, int]]:
        return [
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", 0),
        ]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _health_status(serving: bool) -> "health_pb2.HealthCheckResponse.ServingStatus.ValueType":
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """One grpc.aio server with health and reflection; ``port`` is known after ``start``."""

    def __init__(
        self,
        name: str,
        port: int,
        options: ServerOptions,
        register: Callable[[grpc.aio.Server], None],
        service_names: Sequence[str],
    ) -> None:
        self.name = name
        self._requested_port = port
        self._options = options
        self._service_names = list(service_names)
        self.server = grpc.aio.server(options=options.channel_args())
        register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self._service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        address = _address(self._options.host, self._requested_port)
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"{self.name}: cannot listen on {address}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"{self.name}: cannot listen on {address}")
        await self.set_serving(False)
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = _health_status(serving)
        for name in ("", self.name, *self._service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` seconds."""
        if self.port:
            await self.set_serving(False)
        await self.server.stop(grace)


class ThreadedGrpcServer:
    """One grpcio sync server (``options.threads`` handler threads) with health and
    reflection; the same interface as ``GrpcServer``, driven from the event loop.

    Handlers are registered as generic handlers (``handlers``), so a service may take and
    return serialized bytes and parse them itself. ``extra_ports`` are served too, by the
    same threads (a worker process's own port beside the public one).
    """

    def __init__(
        self,
        name: str,
        port: int,
        options: ServerOptions,
        handlers: Sequence[grpc.GenericRpcHandler],
        service_names: Sequence[str],
        *,
        extra_ports: Sequence[int] = (),
    ) -> None:
        self.name = name
        self._requested_port = port
        self._requested_extra = tuple(extra_ports)
        self._options = options
        self._service_names = list(service_names)
        self._executor = ThreadPoolExecutor(
            max_workers=options.threads, thread_name_prefix=f"grpc-{name}"
        )
        self.server = grpc.server(
            self._executor, handlers=list(handlers), options=options.channel_args()
        )
        # Watch streams wait without holding a handler thread (non-blocking mode).
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self._service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self.extra_ports: list[int] = []  # bound, once started

    def _bind(self, port: int) -> int:
        address = _address(self._options.host, port)
        try:
            bound: int = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"{self.name}: cannot listen on {address}: {exc}") from exc
        if bound == 0:
            raise OSError(f"{self.name}: cannot listen on {address}")
        return bound

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        self.port = self._bind(self._requested_port)
        self.extra_ports = [self._bind(port) for port in self._requested_extra]
        await self.set_serving(False)
        self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = _health_status(serving)
        for name in ("", self.name, *self._service_names):
            self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` seconds; the
        loop keeps running meanwhile, for calls that finish on it."""
        if self.port:
            await self.set_serving(False)
        stopped = self.server.stop(grace)
        await asyncio.to_thread(stopped.wait)
        self._executor.shutdown(wait=False)
