"""Where the workers of ``mixerless serve --workers N`` listen, and what they are told.

**The port plan** (``plan_ports``). Envoy opens about one HTTP/2 connection per worker
thread per endpoint, and the kernel's ``SO_REUSEPORT`` spreads *connections*, not
requests, so two gateway threads on one shared port can keep one worker busy and the
others idle. Each worker therefore also listens on ports of its own, and the xds
service publishes each as an endpoint of the generated clusters
(``PortPlan.services``), so that Envoy spreads requests. Worker ``i`` gets
``base + 3i`` (authz), ``base + 3i + 1`` (ratelimit) and ``base + 3i + 2`` (its own
HTTP port, for readiness and metrics). A fixed, documented layout rather than ports
the OS picks: a restart of the whole process gets the same ports, so the endpoints
Envoy is sent do not change (xds versions are content hashes: nothing is pushed), and
firewalls and ``containerPort`` lists can name them. ``free_port_plan`` asks the OS
instead, for tests. ``check_free`` refuses a plan whose ports are taken, at start-up
rather than in a restart loop.

A worker learns its role from flags the parent appends (``worker_flags``), which
``settings.py`` reads back as a ``WorkerRole``. The processes themselves are
``workers.py``'s.
"""

import os
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from services.xds.build import Services
from services.xds.gateway import Endpoint

PORTS_PER_WORKER = 3  # authz, ratelimit, http


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# --- the port plan ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What the parent told this process (``worker_flags``); index -1: not a worker."""

    index: int = -1
    authz_port: int = 0  # this worker's own ports (the public ones are shared)
    ratelimit_port: int = 0
    lease_socket: Path | None = None  # the parent's counters, when there is no Redis

    @property
    def is_worker(self) -> bool:
        return self.index >= 0


@dataclass(frozen=True, slots=True)
class WorkerPorts:
    """The ports of one worker: its own authz and ratelimit ports, and its HTTP port."""

    index: int
    authz: int
    ratelimit: int
    http: int


@dataclass(frozen=True, slots=True)
class PortPlan:
    """Every worker's ports, by index."""

    workers: tuple[WorkerPorts, ...]

    def ports(self) -> list[int]:
        """Every port of the plan, worker by worker."""
        return [p for w in self.workers for p in (w.authz, w.ratelimit, w.http)]

    def services(self, host: str) -> Services:
        """The xds ``Services``: each worker's authz and ratelimit port an endpoint
        (``host``: the address Envoy reaches the workers at, ``--advertise-address``)."""
        return Services(
            tuple(Endpoint(host, w.authz) for w in self.workers),
            tuple(Endpoint(host, w.ratelimit) for w in self.workers),
        )


def plan_ports(workers: int, base: int, *, reserved: Collection[int] = ()) -> PortPlan:
    """Worker ``i``: authz ``base + 3i``, ratelimit ``base + 3i + 1``, http ``base + 3i + 2``.

    ``reserved`` are ports the plan must not use (the public ones); ``ValueError`` says
    which clash, or that the plan runs past 65535.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    last = base + PORTS_PER_WORKER * workers - 1
    if base < 1 or last > 65535:
        raise ValueError(
            f"worker ports {base}-{last} ({workers} workers x {PORTS_PER_WORKER}) "
            "must lie within 1-65535"
        )
    plan = PortPlan(
        tuple(
            WorkerPorts(i, base + 3 * i, base + 3 * i + 1, base + 3 * i + 2) for i in range(workers)
        )
    )
    clash = sorted(set(plan.ports()) & set(reserved))
    if clash:
        raise ValueError(
            f"worker ports {base}-{last} include {', '.join(map(str, clash))}, "
            "used by another service: choose another base"
        )
    return plan


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports the OS has free right now, all different (each is held until all
    are chosen); another process may take one before it is bound again."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port_plan(workers: int, host: str = "127.0.0.1") -> PortPlan:
    """A plan of ports the OS has free right now (``free_ports``): ``--worker-port-base 0``."""
    ports = free_ports(PORTS_PER_WORKER * workers, host)
    return PortPlan(tuple(WorkerPorts(i, *ports[3 * i : 3 * i + 3]) for i in range(workers)))


def check_port_free(host: str, port: int, what: str) -> None:
    """``OSError`` saying ``what`` port ``port`` is taken when something listens on it."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # As the servers bind: a port in TIME_WAIT is free, a listener is not (even one
        # with SO_REUSEPORT: this socket does not set it).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(
                exc.errno, f"{what} port {port} on {host} is taken: {exc.strerror}"
            ) from exc


def check_free(plan: PortPlan, host: str) -> None:
    """``OSError`` naming the first port of the plan that something already listens on."""
    for worker in plan.workers:
        for name, port in (
            ("authz", worker.authz),
            ("ratelimit", worker.ratelimit),
            ("http", worker.http),
        ):
            check_port_free(host, port, f"worker {worker.index} {name}")


def worker_flags(ports: WorkerPorts, lease_socket: Path | None) -> list[str]:
    """What a worker is told, as ``mixerless serve`` flags (appended last, so they win
    over the same flags earlier in the command line and over ``MIXERLESS_*``)."""
    flags = [
        "--worker-index",
        str(ports.index),
        "--worker-authz-port",
        str(ports.authz),
        "--worker-ratelimit-port",
        str(ports.ratelimit),
        "--http-port",
        str(ports.http),
    ]
    if lease_socket is not None:
        flags += ["--lease-socket", str(lease_socket)]
    return flags
