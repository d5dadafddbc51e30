"""One scenario's runs: idle wait, server, preflight, load, the CPU window, the run loop.

A driver subclasses ``Bench`` with its scenario (how to start the server, check it, build
the generator and summarise a run) and hands ``run_driver`` a coroutine that calls
``measure_runs``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from harness.cpu import machine_busy_seconds, self_cpu_seconds, tree_cpu_seconds, wait_for_idle
from harness.generators import GenResult, Window
from harness.metrics import scrape
from harness.processes import Processes, Server, log_problems, terminate_on_sigterm
from harness.report import Columns, table_header
from harness.stats import latency_ms

T = TypeVar("T")


class RunConfig(Protocol):
    """What the harness reads of a driver's (flat, JSON-recorded) ``Config``."""

    generator: str
    duration: float
    warmup: float
    connections: int
    concurrency: int
    target: str | None
    metrics_url: str | None
    server_pid: int | None
    label: str
    wait_idle: float
    idle_below: float


@dataclass
class Measured:
    """The measured window: the differences between its two samples, and the generator's
    outcome. ``before``/``after`` are the samples, with the scenario's own entries."""

    wall: float
    server_cpu: float  # seconds, the server's whole process tree
    self_cores: float  # this driver (with the Python generator, that is the generator)
    busy_cores: float  # the whole machine
    metrics: Counter[str]
    outcome: GenResult
    latencies_us: list[float]  # sorted
    before: dict[str, Any]
    after: dict[str, Any]

    @property
    def generator_cores(self) -> float:
        """h2load measured over its life, or this process for the Python generator."""
        if self.outcome.cpu_cores is not None:
            return self.outcome.cpu_cores
        return self.self_cores

    def figures(self, duration: float, extra_cores: float = 0.0) -> dict[str, float]:
        """The columns every driver has: rps, latency, server/generator/other cores, window.

        ``extra_cores`` are the scenario's own helpers (e.g. its redis-server), which are
        not counted in ``other``."""
        h2load = self.outcome.cpu_cores if self.outcome.cpu_cores is not None else 0.0
        ours = self.server_cpu / self.wall + extra_cores + self.self_cores + h2load
        return {
            "rps": self.outcome.completed / duration,
            **latency_ms(self.latencies_us),
            "server_cores": self.server_cpu / self.wall,
            "generator_cores": self.generator_cores,
            "other_cores": max(0.0, self.busy_cores - ours),
            "window_s": self.wall,
        }

    def delta(self, key: str) -> Any:
        """``after[key] - before[key]`` of a scenario's own sample entry."""
        return self.after[key] - self.before[key]


class Bench:
    """One scenario; subclasses fill in the hooks below, the harness runs them in order."""

    metrics_service = "ratelimit"  # ``service`` label of mixerless_rpc_requests_total
    log_ignore: tuple[str, ...] = ()  # server log lines containing these are not problems

    def __init__(self, config: RunConfig, procs: Processes, workdir: Path) -> None:
        self.config = config
        self.procs = procs
        self.workdir = workdir

    # --- the scenario's hooks

    def begin_run(self, run: int) -> None:
        """Before the server of run ``run`` starts (after the idle wait)."""

    def start_server(self, run: int) -> Server:
        raise NotImplementedError

    def check_server(self, target: str) -> list[str]:
        """Check a few answers; return what was checked. Raise ``AssertionError`` when wrong."""
        raise NotImplementedError

    def generator(self, run: int, target: str, window: Window) -> Coroutine[Any, Any, GenResult]:
        raise NotImplementedError

    def sample(self, server_pid: int | None) -> dict[str, Any]:
        """The scenario's own entries of a window sample (e.g. its redis-server's CPU)."""
        return {}

    def summarise(self, measured: Measured, checked: list[str]) -> Any:
        raise NotImplementedError

    # --- one run

    async def run_once(self, run: int) -> Any:
        config = self.config
        idle_before = await wait_for_idle(config.wait_idle, config.idle_below)
        self.begin_run(run)
        server: Server | None = None
        if config.target is None:
            server = await asyncio.to_thread(self.start_server, run)
            target, metrics_url = server.target, server.metrics_url
            server_pid: int | None = server.proc.pid
        else:
            target, metrics_url, server_pid = config.target, config.metrics_url, config.server_pid
        try:
            checked = await asyncio.to_thread(self.check_server, target)
            result = await self._drive(run, target, metrics_url, server_pid, checked)
            result.detail["busy_cores_before_run"] = idle_before
        finally:
            if server is not None:
                await asyncio.to_thread(self.procs.stop, server.proc)
        if server is not None:
            result.detail["server_log_problems"] = log_problems(server.log, self.log_ignore)
        return result

    async def _drive(
        self,
        run: int,
        target: str,
        metrics_url: str | None,
        server_pid: int | None,
        checked: list[str],
    ) -> Any:
        config = self.config
        window = Window()
        window.start = time.time() + config.warmup
        window.end = window.start + config.duration
        generator = asyncio.create_task(self.generator(run, target, window))
        try:
            await asyncio.sleep(max(0.0, window.start - time.time()))
            before = await asyncio.to_thread(self._sample, server_pid, metrics_url)
            await asyncio.sleep(max(0.0, window.end - time.time()))
            after = await asyncio.to_thread(self._sample, server_pid, metrics_url)
            outcome = await generator
        finally:
            if not generator.done():
                generator.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await generator
        wall = after["wall"] - before["wall"]
        measured = Measured(
            wall=wall,
            server_cpu=after["server_cpu"] - before["server_cpu"],
            self_cores=(after["self_cpu"] - before["self_cpu"]) / wall,
            busy_cores=(after["machine_busy"] - before["machine_busy"]) / wall,
            metrics=after["metrics"] - before["metrics"],
            outcome=outcome,
            latencies_us=sorted(outcome.latencies_us),
            before=before,
            after=after,
        )
        return self.summarise(measured, checked)

    def _sample(self, server_pid: int | None, metrics_url: str | None) -> dict[str, Any]:
        return {
            "wall": time.time(),
            "server_cpu": tree_cpu_seconds(server_pid) if server_pid else float("nan"),
            **self.sample(server_pid),
            "self_cpu": self_cpu_seconds(),
            "machine_busy": machine_busy_seconds(),
            "metrics": scrape(metrics_url, service=self.metrics_service),
        }


# --- the runs of one invocation


def print_title(config: RunConfig, columns: Columns, more: str = "") -> None:
    print(
        f"# {config.label}: {config.generator}, {config.connections} conns x "
        f"{config.concurrency} streams, {config.duration:g}s (+{config.warmup:g}s warm-up)" + more
    )
    print(table_header(columns))


async def measure_runs(
    bench: Bench,
    runs: int,
    row: Callable[[str, dict[str, Any]], str],
    max_other: float = 0.0,
    retries: int = 0,
    discarded: list[Any] | None = None,
) -> list[Any]:
    """``runs`` runs, each printed as a ``row``. A run during which other processes used more
    than ``max_other`` cores (0: never) is discarded and repeated, at most ``retries`` times."""
    results = []
    for run in range(1, 1 + runs):
        for attempt in range(1 + retries):
            result = await bench.run_once(run)
            busy = max_other > 0 and result.other_cores > max_other
            if not busy or attempt == retries:
                break
            if discarded is not None:
                discarded.append(result)
            print(f"{row(f'({run})', asdict(result))}  discarded: other > {max_other:g}")
        results.append(result)
        print(row(str(run), asdict(result)) + ("  (busy)" if busy else ""), flush=True)
    return results


def run_driver(
    name: str,
    measure: Callable[[Processes, Path], Coroutine[Any, Any, list[T]]],
    keep_logs: bool,
) -> list[T] | int:
    """Run ``measure(procs, workdir)`` on a fresh event loop, stop every process it started,
    and return its results, or the exit status when it failed (1) or was interrupted (130).
    The temporary directory is removed unless ``keep_logs`` or it failed."""
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    failed = True
    try:
        with terminate_on_sigterm():
            results = asyncio.run(measure(procs, workdir))
        failed = False
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, AssertionError, OSError, grpc.RpcError) as exc:
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if keep_logs or failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results
