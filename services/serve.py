"""``mixerless serve``: build every service from ``Settings``, run them, stop gracefully.

This is the composition root: the only place that picks concrete
implementations (counter store, clock) and wires policy reloads to health.
"""

import asyncio
import contextlib
import dataclasses
import os
import signal

import structlog

from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.keys import KeyResolver, RemoteKeySource
from services.authz.providers.registry import ProviderClients
from services.authz.service import AuthzService
from services.authz.servicer import AuthorizationServicer
from services.catalog.loader import PolicySet
from services.catalog.state import PolicyState
from services.catalog.watcher import PolicyWatcher
from services.clock import Clock, SystemClock
from services.envoy_api import (
    AGGREGATED_DISCOVERY_SERVICE_NAME,
    AUTHORIZATION_SERVICE_NAME,
    RATELIMIT_SERVICE_NAME,
    add_AggregatedDiscoveryServiceServicer_to_server,
)
from services.grpc_server import GrpcServer, ThreadedGrpcServer
from services.http_server import HttpServer, OpsView
from services.inline import Inline, require_loop
from services.metrics import Metrics
from services.one_hop import InCheckQuota
from services.ratelimit.counting import Router
from services.ratelimit.lease_authority import LeaseAuthority
from services.ratelimit.lease_policy import LeasePolicy
from services.ratelimit.leased_counter import LeasedCounter
from services.ratelimit.leases import LeasePool
from services.ratelimit.local_cache import OverLimitCache
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.model import RateLimitConfig
from services.ratelimit.parent_authority import ParentCounterStore, ParentLeaseAuthority
from services.ratelimit.service import RateLimitService
from services.ratelimit.servicer import RateLimitServicer
from services.ratelimit.store import CounterStore
from services.settings import Settings
from services.workers import watch_parent
from services.xds.build import Services
from services.xds.gateway import Endpoint
from services.xds.publisher import SnapshotPublisher
from services.xds.server import AdsServicer

log = structlog.get_logger("mixerless")

HTTP_PATHS = "/healthz /healthcheck /readyz /metrics /debug/config /json"


def _leased(authority: LeaseAuthority, processes: int, clock: Clock) -> LeasedCounter:
    pool = LeasePool(LeasePolicy(processes=processes))
    return LeasedCounter(
        pool, authority, clock, before_wait=require_loop, loop=asyncio.get_running_loop()
    )


def build_store(settings: Settings, clock: Clock, metrics: Metrics) -> CounterStore:
    """Redis when ``--redis`` is given, else per-process memory (with a warning), or in
    a worker of ``--workers N``, the parent's counters.

    With Redis (or the parent), limits that say ``counting: leased`` are counted from
    leases of the same counters (``services/ratelimit/counting.py``), the others one
    round trip per call. Leases are sized for every process sharing the counters: the
    ``--lease-processes`` replicas, times the workers of each.
    """
    role = settings.worker
    if settings.redis is None and role.lease_socket is not None:
        socket = role.lease_socket
        return Router(
            ParentCounterStore(socket),
            _leased(ParentLeaseAuthority(socket), max(1, settings.workers), clock),
        )
    if settings.redis is None:
        log.warning(
            "counting in memory: every mixerless process keeps its own counts; "
            "pass --redis to share them"
        )
        store = InMemoryCounterStore(clock, max_counters=settings.memory_max_counters)
        metrics.evictions.watch(lambda: store.evicted)
        return store
    from services.ratelimit.redis_authority import RedisLeaseAuthority
    from services.ratelimit.redis_store import RedisCounterStore

    exact = RedisCounterStore.from_settings(settings.redis)
    authority = RedisLeaseAuthority(
        exact.client,
        timeout=settings.redis.timeout,
        expiration_jitter=settings.redis.expiration_jitter,
    )
    processes = settings.lease_processes
    if role.is_worker:
        processes *= max(1, settings.workers)
    return Router(exact, _leased(authority, processes, clock))


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (installed before anything starts, so a
    signal during start-up is not lost)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _return_idle(leased: LeasedCounter, interval: float = 1.0) -> None:
    """Give idle leases back every ``interval`` seconds (and free their memory)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await leased.release_idle()
        except Exception:  # a failed return strands units, never more; go on
            log.exception("returning idle leases failed")


class Application:
    """Every enabled service of one ``mixerless serve`` process.

    In a worker of ``--workers N`` (``settings.worker``), the authz and ratelimit ports
    are shared with the other workers (``SO_REUSEPORT``) and each also listens on its
    own; there is no xds service, and the process stops when its parent exits.
    ``endpoints`` is where the xds service tells Envoy to reach authz and ratelimit
    (default: ``--advertise-address`` with this process's ports).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: CounterStore | None = None,
        metrics: Metrics | None = None,
        endpoints: Services | None = None,
    ) -> None:
        self.settings = settings
        role = settings.worker
        # The parent (its pid read now, before it could exit), whose exit stops a worker.
        self._parent = os.getppid() if role.is_worker else None
        grpc_options = settings.server
        if role.is_worker:
            grpc_options = dataclasses.replace(grpc_options, reuse_port=True)
        self.clock = clock if clock is not None else SystemClock()
        self.metrics = metrics if metrics is not None else Metrics()
        self.state = PolicyState()
        self.watcher = PolicyWatcher(
            settings.policies,
            settings.load,
            self.state,
            self.metrics,
            self.clock,
            interval=settings.reload_interval,
        )
        self.view = OpsView(self.state, self.metrics)
        self.grpc_servers: list[GrpcServer | ThreadedGrpcServer] = []
        # Check and ShouldRateLimit run on the threaded servers' handler threads, and on
        # this loop only when they must wait for I/O (services/inline.py).
        inline = Inline(asyncio.get_running_loop())
        self.ratelimit: ThreadedGrpcServer | None = None
        self.store: CounterStore | None = None
        counting: RateLimitService | None = None
        # The rate limit service counts for its gRPC port and for the quotas counted
        # inside Check (one hop): one store, one set of counters, in either case.
        if "ratelimit" in settings.services or "authz" in settings.services:
            if store is None:
                store = build_store(settings, self.clock, self.metrics)
            self.store = store
            cache = None
            if settings.local_cache_size:
                cache = OverLimitCache(self.clock, settings.local_cache_size)
            counting = RateLimitService(
                self._ratelimit_config,
                self.store,
                self.clock,
                self.metrics,
                settings.ratelimit,
                cache,
            )
        if "ratelimit" in settings.services and counting is not None and self.store is not None:
            servicer = RateLimitServicer(counting, self.metrics, inline)
            self.ratelimit = ThreadedGrpcServer(
                "ratelimit",
                settings.ratelimit_port,
                grpc_options,
                [servicer.handler()],
                [RATELIMIT_SERVICE_NAME],
                extra_ports=(role.ratelimit_port,) if role.is_worker else (),
            )
            self.grpc_servers.append(self.ratelimit)
            self.view.ratelimit = counting
            # Readiness follows the store only where the rate limit port is served: an
            # authz-only process stays ready, its quotas following onStoreFailure instead.
            self.view.checks[self.store.name] = self.store.ping
        self.authz: ThreadedGrpcServer | None = None
        self.jwt: JwtAuthenticator | None = None
        self.providers: ProviderClients | None = None
        if "authz" in settings.services:
            jwks_errors = self.metrics.backend_errors.labels("jwks")
            remote = RemoteKeySource(
                clock=self.clock,
                refresh_interval=settings.jwks_refresh_interval,
                on_failure=lambda _rule: jwks_errors.inc(),
            )
            self.jwt = JwtAuthenticator(KeyResolver(remote=remote), self.clock)
            self.providers = ProviderClients()
            authz = AuthzService(
                self._authz_config,
                self.jwt,
                self.providers,
                self.metrics,
                settings.workload,
                InCheckQuota(counting) if counting is not None else None,
                clock=self.clock,
                cache=settings.decision_cache,
            )
            authz_servicer = AuthorizationServicer(authz, self.metrics, inline)
            self.authz = ThreadedGrpcServer(
                "authz",
                settings.authz_port,
                grpc_options,
                [authz_servicer.handler()],
                [AUTHORIZATION_SERVICE_NAME],
                extra_ports=(role.authz_port,) if role.is_worker else (),
            )
            self.grpc_servers.append(self.authz)
        self.xds: GrpcServer | None = None
        advertised = settings.advertise_address
        if endpoints is None:
            endpoints = Services(
                Endpoint(advertised, settings.authz_port),
                Endpoint(advertised, settings.ratelimit_port),
            )
        self.publisher = SnapshotPublisher(endpoints, self.metrics)
        self.ads: AdsServicer | None = None
        if "xds" in settings.services and not role.is_worker:
            ads = AdsServicer(
                self.publisher.cache, self.publisher.gateway_for, self.metrics, self.clock
            )
            self.ads = ads
            self.xds = GrpcServer(
                "xds",
                settings.xds_port,
                settings.server,
                lambda server: add_AggregatedDiscoveryServiceServicer_to_server(ads, server),
                [AGGREGATED_DISCOVERY_SERVICE_NAME],
            )
            self.grpc_servers.append(self.xds)
            self.view.debug["xds"] = ads.debug_state
        self.http = HttpServer(self.view, settings.server.host, settings.http_port)
        self._tasks: list[asyncio.Task[None]] = []
        self._health_updates: set[asyncio.Task[None]] = set()

    def _authz_config(self) -> AuthzConfig | None:
        current = self.state.current
        return current.authz if current is not None else None

    def _ratelimit_config(self) -> RateLimitConfig | None:
        current = self.state.current
        return current.ratelimit if current is not None else None

    async def start(self) -> None:
        """Start servers (NOT_SERVING), then load policies; SERVING once a set is loaded.

        If any server cannot start, the ones already started are stopped again.
        """
        try:
            for server in self.grpc_servers:
                port = await server.start()
                extra = server.extra_ports if isinstance(server, ThreadedGrpcServer) else []
                if extra:
                    log.info("grpc server listening", service=server.name, port=port, own=extra)
                else:
                    log.info("grpc server listening", service=server.name, port=port)
            port = await self.http.start()
        except BaseException:
            await self.stop()
            raise
        log.info("http server listening", port=port, paths=HTTP_PATHS)
        self.state.subscribe(self._on_policy)
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="policy-watcher"))
        if isinstance(self.store, Router) and self.store.leased is not None:
            leased = self.store.leased
            self._tasks.append(asyncio.create_task(_return_idle(leased), name="idle-leases"))

    def _on_policy(self, policy_set: PolicySet) -> None:
        if self.xds is not None:
            self.publisher.publish(policy_set.xds.gateways)
        updates = [server.set_serving(True) for server in self.grpc_servers]
        if self.providers is not None:  # close clients of providers the new set dropped
            updates.append(self.providers.retain(policy_set.authz.mesh.providers.values()))
        for update in updates:
            task = asyncio.create_task(update)
            self._health_updates.add(task)
            task.add_done_callback(self._health_updates.discard)

    async def stop(self) -> None:
        """Stop taking calls, drain in-flight ones, release backends."""
        self.view.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.ads is not None:  # ADS streams never end by themselves: end them first
            self.ads.close_streams()
        await asyncio.gather(*(s.stop(self.settings.shutdown_grace) for s in self.grpc_servers))
        await asyncio.gather(*self._health_updates, return_exceptions=True)
        await self.http.stop()
        if self.store is not None:
            await self.store.close()
        if self.jwt is not None:
            await self.jwt.aclose()
        if self.providers is not None:
            await self.providers.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        stop = stop_on_signals()
        await self.start()
        parent = None
        if self._parent is not None:
            parent = asyncio.create_task(watch_parent(self._parent), name="parent-watch")
            parent.add_done_callback(lambda _: stop.set())
        await stop.wait()
        if parent is not None and parent.done():
            log.warning("the parent process exited; stopping", parent=self._parent)
        log.info("shutting down", grace_seconds=self.settings.shutdown_grace)
        await self.stop()
        if parent is not None:
            parent.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await parent
