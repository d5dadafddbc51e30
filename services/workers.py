"""Worker processes for ``mixerless serve --workers N``: their supervisor (the ports they
listen on are ``worker_ports.py``'s).

One Python process answers about one core's worth of calls (grpcio's per-call cost and
the GIL: ``docs/architecture.md``, "Design choices"). To use every core, the parent
process starts N workers, each answering authz and rate limit calls, and keeps what
must be one per deployment (the xds service, the counters when there is no Redis, the
HTTP port's aggregated view).

**The supervisor** (``Supervisor``) starts each worker as ``argv`` plus
``worker_flags`` (its index, its ports, the parent's counter socket), in its own
session, so a terminal's Ctrl-C reaches the parent only and every signal takes one
path: the parent's ``stop`` sends SIGTERM to every worker, gives them ``grace`` seconds
to drain, then SIGKILLs what is left. A worker that exits on its own is started again
after a capped exponential backoff (``Backoff``: 0.1 s doubling to 10 s; back to
0.1 s after a worker that ran 30 s), with one warning per restart. A worker that
runs ``watch_parent`` stops when the parent dies without telling it (SIGKILL).

**Readiness** is every worker's ``/readyz`` answering 200, asked on its own HTTP port
when the parent's is asked (``ready``), or until it is (``wait_ready``, at start-up).
Polling the worker's own endpoint, rather than reading a line a worker prints once,
follows a worker's readiness as it changes (no policy set yet, its store down, draining after
SIGTERM) through the checks that already decide its ``/readyz``, and needs no pipe the
parent must keep reading; the same port serves the worker's ``/metrics``, which the
parent scrapes (``scrape``) and merges (``metrics_merge``).
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from services.worker_ports import PortPlan, WorkerPorts, worker_flags

log = structlog.get_logger("mixerless.workers")


async def watch_parent(parent: int) -> None:
    """Return once process ``parent`` has exited (at once if it already has): a worker's
    cue to stop when its parent died without telling it (SIGKILL, a crash).

    Waits on a pidfd (Linux 5.3+), which becomes readable when the process exits: no
    polling, and no mistaking a new process that reused the id.
    """
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def probe_host(host: str) -> str:
    """Where the parent reaches a worker listening on ``host``: loopback for wildcards."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


# --- the supervisor ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a worker that exited waits before it is started again."""

    first: float = 0.1
    cap: float = 10.0
    stable: float = 30.0  # a worker that ran this long restarts after ``first`` again

    def delay(self, failures: int) -> float:
        """The wait before the restart after ``failures`` exits in a row (1 or more)."""
        return float(min(self.cap, self.first * 2 ** max(failures - 1, 0)))


class _Worker:
    def __init__(self, ports: WorkerPorts) -> None:
        self.ports = ports
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.exit_code: int | None = None  # of its last process to exit
        self.task: asyncio.Task[None] | None = None


class Supervisor:
    """Starts one process per planned worker, restarts those that die, stops them all."""

    def __init__(
        self,
        argv: Sequence[str],
        plan: PortPlan,
        *,
        lease_socket: Path | None = None,
        env: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        host: str = "127.0.0.1",
        probe_timeout: float = 1.0,
    ) -> None:
        """``argv`` is the worker command before ``worker_flags``; ``env`` its whole
        environment (None: this process's); ``host`` the address workers listen on."""
        if not argv:
            raise ValueError("the worker command is empty")
        self._argv = list(argv)
        self._lease_socket = lease_socket
        self._env = dict(env) if env is not None else None
        self._backoff = backoff if backoff is not None else Backoff()
        self._probe_host = probe_host(host)
        self._probe_timeout = probe_timeout
        self._workers = [_Worker(ports) for ports in plan.workers]
        self._stopping = asyncio.Event()
        self._killing = False  # stop()'s grace is over
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None

    # --- state -------------------------------------------------------------------------

    @property
    def pids(self) -> dict[int, int]:
        """The process id of each worker running now, by index."""
        return {w.ports.index: w.process.pid for w in self._workers if w.process is not None}

    @property
    def exit_codes(self) -> dict[int, int]:
        """The exit code of each worker's last process to exit, by index (negative: the
        signal that ended it), for the workers one has exited."""
        return {w.ports.index: w.exit_code for w in self._workers if w.exit_code is not None}

    @property
    def restarts(self) -> dict[int, int]:
        """How many times each worker was started again, by index."""
        return {w.ports.index: w.restarts for w in self._workers}

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is tested each time a worker starts or
        exits (bound the wait with ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker; if one cannot be started (``OSError``), stop the others."""
        try:
            for worker in self._workers:
                worker.process = await self._spawn(worker)
        except OSError:
            await self.stop(0)
            raise
        for worker in self._workers:
            worker.task = asyncio.create_task(
                self._watch(worker), name=f"worker-{worker.ports.index}"
            )
        await self._notify()

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        command = [*self._argv, *worker_flags(worker.ports, self._lease_socket)]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, env=self._env, start_new_session=True
        )
        log.info("worker started", worker=worker.ports.index, pid=process.pid)
        return process

    async def _watch(self, worker: _Worker) -> None:
        """Wait for the worker to exit; unless stopping, start it again after a backoff."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            process = worker.process
            if process is None:  # the last start failed (logged)
                failures += 1
                delay = self._backoff.delay(failures)
            else:
                started = loop.time()
                code = await process.wait()
                worker.process, worker.exit_code = None, code
                await self._notify()
                if self._stopping.is_set():
                    return
                ran = loop.time() - started
                failures = 1 if ran >= self._backoff.stable else failures + 1
                delay = self._backoff.delay(failures)
                log.warning(
                    "worker exited; starting it again",
                    worker=worker.ports.index,
                    pid=process.pid,
                    exit_code=code,
                    restart_in=round(delay, 3),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            try:
                worker.process = await self._spawn(worker)
            except OSError as exc:
                log.error("cannot start worker", worker=worker.ports.index, error=str(exc))
                continue
            worker.restarts += 1
            if self._stopping.is_set():  # stop() began while it was starting
                worker.process.send_signal(signal.SIGKILL if self._killing else signal.SIGTERM)
            await self._notify()

    def forward(self, sig: int) -> None:
        """Send ``sig`` to every worker running now."""
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def stop(self, grace: float, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to every worker, wait up to ``grace`` seconds for them to exit,
        then SIGKILL those still running; no worker is started again."""
        self._stopping.set()
        self.forward(sig)
        watchers = [w.task for w in self._workers if w.task is not None]
        if watchers:
            await asyncio.wait(watchers, timeout=grace)
        self._killing = True
        self.forward(signal.SIGKILL)
        for worker in self._workers:
            if worker.task is None and worker.process is not None:  # start() failed
                worker.exit_code = await worker.process.wait()
                worker.process = None
        await asyncio.gather(*watchers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- readiness and metrics -----------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._probe_timeout)
            )
        return self._session

    def _url(self, worker: _Worker, path: str) -> str:
        host = self._probe_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{worker.ports.http}{path}"

    async def _get(self, worker: _Worker, path: str) -> tuple[int, bytes] | str:
        """The worker's answer to ``GET path`` (status, body), or why there is none."""
        if worker.process is None:
            return "not running"
        try:
            async with self._client().get(self._url(worker, path)) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"unreachable: {exc!r}"

    async def readiness(self) -> dict[int, str]:
        """Each worker's readiness by index: ``ok``, or why not."""

        async def probe(worker: _Worker) -> str:
            answer = await self._get(worker, "/readyz")
            if isinstance(answer, str):
                return answer
            return "ok" if answer[0] == 200 else f"/readyz answered {answer[0]}"

        states = await asyncio.gather(*(probe(w) for w in self._workers))
        return {w.ports.index: state for w, state in zip(self._workers, states, strict=True)}

    async def ready(self) -> bool:
        """Whether every worker is ready now."""
        return all(state == "ok" for state in (await self.readiness()).values())

    async def wait_ready(self, interval: float = 0.05) -> None:
        """Return once every worker is ready, asking every ``interval`` seconds (bound
        the wait with ``asyncio.timeout``)."""
        # Readiness is each worker's /readyz: there is nothing to wait on but asking.
        while not await self.ready():  # noqa: ASYNC110
            await asyncio.sleep(interval)

    async def scrape(self, path: str = "/metrics") -> list[bytes]:
        """The body of every worker that answers ``GET path`` with 200, in index order."""
        answers = await asyncio.gather(*(self._get(w, path) for w in self._workers))
        return [a[1] for a in answers if not isinstance(a, str) and a[0] == 200]
