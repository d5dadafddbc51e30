"""``mixerless serve --workers N``: the parent process, and how it lays its workers out.

One Python process answers about one core's worth of calls, so the authz and rate limit
calls are answered by N worker processes (ports: ``worker_ports.py``; supervisor:
``workers.py``), each an ordinary ``serve.Application`` told its role by ``worker_flags``.
The parent keeps what must be one per deployment, and answers no authz or rate limit call itself:

* **the xds service**, from its own load of the policy directory; the generated authz
  and ratelimit clusters list every worker's own ports as endpoints
  (``PortPlan.services``), so Envoy spreads its requests over the workers;
* **the counters**, when there is no Redis: a ``MemoryLeaseAuthority`` served to the
  workers over a private Unix socket (``ratelimit/parent_server.py``). Workers count
  exactly through it, or from leases of it (``counting: leased``), so N workers never
  admit more than one process would. With Redis the workers share Redis, as replicas do;
* **the HTTP port**: ``/metrics`` is its own exposition and every worker's, merged
  (``metrics_merge``); ``/readyz`` is its policy check and every worker's ``/readyz``;
  ``/debug/config`` is its own load, plus the workers' pids and ports; ``POST /json`` is
  answered here, counted on the same counters as the workers' (the parent's, or Redis).

Every worker also listens on the public authz and ratelimit ports (``SO_REUSEPORT``:
the kernel spreads connections), for Envoys configured by hand. Each worker watches the
policy directory itself, so a change reaches every worker within ``--reload-interval``.

``plan_layout`` decides, before anything starts, whether there are workers at all
(``--workers 1``, and a process with neither authz nor ratelimit to serve, run one
process exactly as without this module) and which ports they get, refusing a plan whose
ports are taken.

Shutdown, on SIGTERM or SIGINT: the HTTP port says 503 and the ADS streams are ended;
every worker gets SIGTERM and ``--shutdown-grace`` (plus ``STOP_MARGIN``) to drain
before SIGKILL; then the xds and HTTP servers stop; the counters' socket closes last,
after the workers have given back the leased units they held.
"""

import asyncio
import dataclasses
import site
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

import services
from services.catalog.loader import PolicySet
from services.clock import Clock, SystemClock
from services.metrics import Metrics
from services.metrics_merge import merge_expositions
from services.ratelimit.local_cache import OverLimitCache
from services.ratelimit.memory_authority import MemoryLeaseAuthority
from services.ratelimit.model import RateLimitConfig
from services.ratelimit.parent_server import LeaseServer
from services.ratelimit.service import RateLimitService
from services.ratelimit.store import CounterStore
from services.serve import Application, stop_on_signals
from services.settings import Settings, SettingsError
from services.worker_ports import (
    PORTS_PER_WORKER,
    PortPlan,
    WorkerPorts,
    check_free,
    check_port_free,
    default_workers,
    free_ports,
    plan_ports,
)
from services.workers import Supervisor

log = structlog.get_logger("mixerless.workers")

STOP_MARGIN = 5.0  # seconds a worker gets past --shutdown-grace to exit, before SIGKILL
READY_WITHIN = 60.0  # workers not ready this long after start are logged, once
PROBE_TIMEOUT = 0.5  # a worker's /readyz or /metrics; within /readyz's own 1 s


@dataclass(frozen=True, slots=True)
class Layout:
    """How many workers, their own ports, and the public ports they share."""

    workers: int
    plan: PortPlan
    authz_port: int
    ratelimit_port: int


def worker_services(settings: Settings) -> frozenset[str]:
    """What the workers serve: everything asked for but xds, which the parent runs."""
    return settings.services - {"xds"}


def plan_layout(settings: Settings) -> Layout | None:
    """The workers ``settings`` ask for, or None for one process as before.

    None for ``--workers 1``, a worker itself, and ``--only xds``. Otherwise the
    public ports are resolved (0: a free port, the same for every worker) and the
    worker ports planned; ``SettingsError`` for a plan that cannot be, ``OSError`` for a
    port something already listens on, before anything starts.
    """
    if settings.worker.is_worker:
        return None
    workers = settings.workers or default_workers()
    served = worker_services(settings)
    if workers <= 1 or not served:
        return None
    host = settings.server.host
    authz, ratelimit, base = settings.authz_port, settings.ratelimit_port, settings.worker_port_base
    wanted = (authz == 0) + (ratelimit == 0) + (PORTS_PER_WORKER * workers if base == 0 else 0)
    picked = iter(free_ports(wanted, host))  # all at once: none twice
    authz = authz or next(picked)
    ratelimit = ratelimit or next(picked)
    if base == 0:
        plan = PortPlan(
            tuple(WorkerPorts(i, next(picked), next(picked), next(picked)) for i in range(workers))
        )
    else:
        public = {authz, ratelimit, settings.xds_port, settings.http_port}
        try:
            plan = plan_ports(workers, base, reserved=public)
        except ValueError as exc:
            raise SettingsError(f"--worker-port-base / MIXERLESS_WORKER_PORT_BASE: {exc}") from exc
    check_free(plan, host)
    for name, port in (("authz", authz), ("ratelimit", ratelimit)):
        if name in served:  # with SO_REUSEPORT, workers would share it with its owner
            check_port_free(host, port, name)
    return Layout(workers, plan, authz, ratelimit)


_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from services.cli import main; "
_BOOT += "sys.exit(main())"


def python_command() -> list[str]:
    """How to run this process's ``services`` package in a new interpreter: ``-m
    services`` when it is installed, else from its source tree, by path (a tree run
    without installing it). ``-P``: never from the working directory."""
    root = Path(services.__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in (*site.getsitepackages(), site.getusersitepackages())}
    if root in installed:
        return [sys.executable, "-P", "-m", "services"]
    return [sys.executable, "-P", "-c", _BOOT, str(root)]


def worker_command(argv: Sequence[str], settings: Settings, layout: Layout) -> list[str]:
    """A worker's command line before ``worker_flags``: this ``mixerless serve``'s own
    arguments (``argv``, from ``serve`` on), then what every worker runs the same way."""
    return [
        *python_command(),
        *argv,
        "--only",
        ",".join(sorted(worker_services(settings))),
        "--workers",
        str(layout.workers),
        "--authz-port",
        str(layout.authz_port),
        "--ratelimit-port",
        str(layout.ratelimit_port),
    ]


class Parent:
    """The parent of ``--workers N``: workers, their counters, xds, the HTTP port."""

    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        argv: Sequence[str],
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``argv``: this ``mixerless serve``'s arguments, from ``serve`` on; ``env``: the
        workers' whole environment (default: this process's)."""
        self.settings = settings
        self.layout = layout
        self.clock = clock if clock is not None else SystemClock()
        self.metrics = metrics if metrics is not None else Metrics()
        self.lease_server: LeaseServer | None = None
        if settings.redis is None:
            authority = MemoryLeaseAuthority(self.clock, max_counters=settings.memory_max_counters)
            self.metrics.evictions.watch(lambda: authority.evicted)
            self.lease_server = LeaseServer(authority)
        self.supervisor = Supervisor(
            worker_command(argv, settings, layout),
            layout.plan,
            lease_socket=self.lease_server.path if self.lease_server is not None else None,
            env=env,
            host=settings.server.host,
            probe_timeout=PROBE_TIMEOUT,
        )
        self.app: Application | None = None  # built in start(), once the workers run
        self._store: CounterStore | None = None  # /json's, when it is not the lease server's
        self._tasks: list[asyncio.Task[None]] = []

    def _application(self) -> Application:
        """xds, the HTTP port and the policy watcher: an ``Application`` without authz
        or ratelimit, whose HTTP port reports on the workers too."""
        settings = self.settings
        app = Application(
            dataclasses.replace(settings, services=settings.services & {"xds"}),
            clock=self.clock,
            metrics=self.metrics,
            endpoints=self.layout.plan.services(settings.advertise_address),
        )
        view = app.view
        view.checks["workers"] = self._workers_ready
        view.exposition = self._exposition
        view.debug["workers"] = self._describe_workers
        if "ratelimit" in worker_services(settings):
            view.ratelimit = self._json_service(app)
        return app

    def _json_service(self, app: Application) -> RateLimitService:
        """``POST /json``, counted on the workers' counters (exactly: no leases here)."""
        store: CounterStore
        if self.lease_server is not None:
            store = self.lease_server.authority
        else:
            from services.ratelimit.redis_store import RedisCounterStore

            assert self.settings.redis is not None
            store = self._store = RedisCounterStore.from_settings(self.settings.redis)
        size = self.settings.local_cache_size

        def config() -> RateLimitConfig | None:
            current: PolicySet | None = app.state.current
            return current.ratelimit if current is not None else None

        return RateLimitService(
            config,
            store,
            self.clock,
            self.metrics,
            self.settings.ratelimit,
            OverLimitCache(self.clock, size) if size else None,
        )

    # --- the HTTP port ------------------------------------------------------------------

    async def _workers_ready(self) -> None:
        """``/readyz``'s ``workers`` check: every worker's own ``/readyz`` answers 200."""
        states = await self.supervisor.readiness()
        waiting = [f"worker {i}: {state}" for i, state in sorted(states.items()) if state != "ok"]
        if waiting:
            raise RuntimeError("; ".join(waiting))

    async def _exposition(self) -> bytes:
        """``/metrics``: this process's metrics and every worker's that answers, merged."""
        return merge_expositions([self.metrics.exposition(), *await self.supervisor.scrape()])

    def _describe_workers(self) -> dict[str, Any]:
        pids, restarts = self.supervisor.pids, self.supervisor.restarts
        server = self.lease_server
        return {
            "count": self.layout.workers,
            "authz_port": self.layout.authz_port,
            "ratelimit_port": self.layout.ratelimit_port,
            "counters": str(server.path) if server is not None else "redis",
            "workers": [
                {
                    "index": w.index,
                    "pid": pids.get(w.index),
                    "restarts": restarts[w.index],
                    "authz_port": w.authz,
                    "ratelimit_port": w.ratelimit,
                    "http_port": w.http,
                }
                for w in self.layout.plan.workers
            ],
        }

    # --- running ------------------------------------------------------------------------

    async def start(self) -> None:
        """The counters' socket, the workers, then xds and HTTP (and the policy
        watcher); what started is stopped again if something cannot start.

        Workers first: they are forked before this process has gRPC threads (grpcio
        logs each fork it sees while its threads run)."""
        if self.lease_server is not None:
            await self.lease_server.start()
        try:
            await self.supervisor.start()
            self.app = self._application()
        except BaseException:
            await self.supervisor.stop(0)
            await self._close_counters()
            raise
        try:
            await self.app.start()  # (stops what it started itself when it fails)
        except BaseException:
            await self.supervisor.stop(0)
            await self._close_counters()
            raise
        plan = self.layout.plan
        log.info(
            "workers started",
            workers=self.layout.workers,
            pids=list(self.supervisor.pids.values()),
            authz_ports=[self.layout.authz_port, *(w.authz for w in plan.workers)],
            ratelimit_ports=[self.layout.ratelimit_port, *(w.ratelimit for w in plan.workers)],
        )
        self._tasks.append(asyncio.create_task(self._announce_ready(), name="workers-ready"))

    async def _announce_ready(self) -> None:
        try:
            async with asyncio.timeout(READY_WITHIN):
                await self.supervisor.wait_ready(interval=0.1)
        except TimeoutError:
            readiness = await self.supervisor.readiness()
            log.warning("workers not ready", after_seconds=READY_WITHIN, readiness=readiness)
            return
        log.info("workers ready", workers=self.layout.workers)

    async def stop(self) -> None:
        """Drain the workers, then stop xds and HTTP, then close the counters."""
        app = self.app
        if app is not None:
            app.view.stopping = True
            if app.ads is not None:  # Envoys reconnect elsewhere while the workers drain
                app.ads.close_streams()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.supervisor.stop(self.settings.shutdown_grace + STOP_MARGIN)
        # 0 for a worker that drained; -9 for one killed when the grace was over.
        log.info("workers stopped", exit_codes=self.supervisor.exit_codes)
        if app is not None:
            await app.stop()
        await self._close_counters()

    async def _close_counters(self) -> None:
        if self._store is not None:
            await self._store.close()
        if self.lease_server is not None:  # last: workers return their leases through it
            await self.lease_server.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully (see the module's doc)."""
        stop = stop_on_signals()
        await self.start()
        await stop.wait()
        log.info("shutting down", grace_seconds=self.settings.shutdown_grace)
        await self.stop()
