"""Load driver for mixerless's rate limit service (``RateLimitService/ShouldRateLimit``).

It starts its own ``mixerless serve`` (and, with ``--store redis``, its own
``redis-server``) on free ports with a temporary policy directory, or targets an
existing server with ``--target``. Before each run it checks a few answers (so a
broken server cannot be benchmarked), then drives closed-loop load with h2load
(pre-serialized gRPC frames; cheapest generator) or a built-in grpc.aio client.

Each invocation appends one JSON line to ``loadtest/out/results.jsonl`` and prints
a table. See ``loadtest/README.md`` for usage and caveats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services import envoy_api as api

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
RESULTS = OUT_DIR / "results.jsonl"
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
DOMAIN = "edge"
CLK_TCK = os.sysconf("SC_CLK_TCK")
OK, OVER_LIMIT = 1, 2
# A RateLimitResponse starts with field 1 (overall_code, varint): 08 01 = OK, 08 02 = OVER_LIMIT.
RESPONSE_OK, RESPONSE_OVER = b"\x08\x01", b"\x08\x02"


# --- policy and requests ---------------------------------------------------------------


def policy_yaml(user_limit: int, tiny_limit: int) -> str:
    """The benchmark policy: every ``user-*`` gets ``user_limit``/min, ``tiny-*`` ``tiny_limit``."""
    block = f"""\
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: {user_limit}
  - key: user
    value: tiny-*
    rate_limit:
      unit: minute
      requests_per_unit: {tiny_limit}
"""
    nested = "".join("    " + line + "\n" for line in block.splitlines())
    return (
        "# Written by loadtest/rls_load.py: one counter per user, plus one per (product, user).\n"
        f"domain: {DOMAIN}\n"
        "descriptors:\n"
        f"{block}"
        "  - key: generic_key\n"
        "    value: product\n"
        "    descriptors:\n"
        f"{nested}"
    )


def request_bytes(user: str, descriptors: int) -> bytes:
    """A serialized RateLimitRequest touching 1 or 2 counters of ``user``."""
    entries = [api.RateLimitDescriptor(entries=[{"key": "user", "value": user}])]
    if descriptors == 2:
        entries.append(
            api.RateLimitDescriptor(
                entries=[{"key": "generic_key", "value": "product"}, {"key": "user", "value": user}]
            )
        )
    return bytes(api.RateLimitRequest(domain=DOMAIN, descriptors=entries).SerializeToString())


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message (uncompressed), as h2load sends it with ``-d``."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def user_names(users: int, over_share: float, nonce: str) -> list[str]:
    """``users`` names; the first ``over_share`` of them are ``tiny-*`` (tiny limit)."""
    tiny = round(users * over_share)
    if over_share > 0:
        tiny = max(tiny, 1)
    return [
        (f"tiny-{nonce}-{n}" if n < tiny else f"user-{nonce}-{n}") for n in range(max(users, 1))
    ]


# --- processes ----------------------------------------------------------------------


class Processes:
    """Every process this driver started; each is stopped by its own pid on exit."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the driver only; it stops the rest
            )
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` without a thread (a pidfd on the loop), so cancelling is immediate."""
    if proc.poll() is None:
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(pidfd, exited.set)
        try:
            await exited.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    return proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of ``root`` and all its live descendants (all threads), in seconds."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(ticks.get(pid, 0) for pid in tree) / CLK_TCK


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children (h2load processes, once waited for)."""
    times = os.times()
    return times.children_user + times.children_system


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle, not iowait) since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{tail}")
        try:
            status, body = http_get(url)
            if status == 200:
                return
            last = f"{status} {body.decode(errors='replace')[:300]}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


def wait_grpc_ready(target: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{tail}")
        with grpc.insecure_channel(target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                continue
    raise RuntimeError(f"{target} not accepting gRPC after {timeout:.0f}s")


_SAMPLE = re.compile(r"^(mixerless_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def scrape(metrics_url: str | None, service: str = "ratelimit") -> Counter[str]:
    """Counters from ``/metrics``: ``result|<result>`` (of ``service``), ``hits|<outcome>``,
    ``backend_errors``."""
    found: Counter[str] = Counter()
    if metrics_url is None:
        return found
    _, body = http_get(metrics_url, timeout=5.0)
    for line in body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == "mixerless_rpc_requests_total" and f'service="{service}"' in labels:
            result = re.search(r'result="([^"]+)"', labels)
            found[f"result|{result.group(1) if result else '?'}"] += int(float(value))
        elif name == "mixerless_ratelimit_hits_total":
            outcome = re.search(r'outcome="([^"]+)"', labels)
            found[f"hits|{outcome.group(1) if outcome else '?'}"] += int(float(value))
        elif name == "mixerless_backend_errors_total":
            found["backend_errors"] += int(float(value))
    return found


async def wait_for_idle(wait_idle: float, idle_below: float) -> float:
    """Wait (up to ``wait_idle`` s) until the machine uses < ``idle_below`` cores; return the
    last 1 s busy figure."""
    started = time.monotonic()
    busy = float("nan")
    while time.monotonic() - started < wait_idle:
        before = machine_busy_seconds()
        await asyncio.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < idle_below:
            break
    else:
        if wait_idle > 0:
            print(f"  machine still busy ({busy:.2f} cores) after {wait_idle:g}s: running")
    return busy


def log_problems(log: Path, ignore: Iterable[str] = ("counting in memory",)) -> list[str]:
    """Error, warning and traceback lines of a server log, except those containing ``ignore``."""
    lines = log.read_text(errors="replace").splitlines()
    skip = tuple(ignore)
    bad = [
        line[:300]
        for line in lines
        if any(word in line.lower() for word in ("error", "warning", "traceback", "exception"))
        and not any(text in line for text in skip)
    ]
    if bad:
        print(f"  server log {log.name}: {len(bad)} problem line(s), first: {bad[0][:200]}")
    return bad[:20]


# --- correctness check before every run ------------------------------------------------


def preflight(target: str, descriptors: int, tiny_limit: int, nonce: str) -> list[str]:
    """Check a few answers; return what was checked. Raises ``AssertionError`` when wrong."""
    checked: list[str] = []
    to_next_minute = 60 - time.time() % 60
    if to_next_minute < 2:  # the checks count within one per-minute window
        time.sleep(to_next_minute + 0.1)
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = api.RateLimitServiceStub(channel)
        raw = channel.unary_unary(METHOD)
        user = f"check-{nonce}"
        previous: list[int] | None = None
        for attempt in range(3):
            response = api.RateLimitResponse.FromString(
                raw(request_bytes(user, descriptors), timeout=5)
            )
            if response.overall_code != OK or len(response.statuses) != descriptors:
                raise AssertionError(f"{user} request {attempt + 1}: expected OK, got {response}")
            remaining = [s.limit_remaining for s in response.statuses]
            if any(
                s.code != OK or s.current_limit.requests_per_unit == 0 for s in response.statuses
            ):
                raise AssertionError(f"{user}: every descriptor must be OK and limited: {response}")
            if previous is not None and [p - 1 for p in previous] != remaining:
                raise AssertionError(f"{user}: limit_remaining {previous} -> {remaining}")
            previous = remaining
        checked.append(f"{user}: 3x OK, limit_remaining {previous} decreasing by 1")
        tiny = f"tiny-check-{nonce}"
        codes = []
        for _ in range(tiny_limit + 2):
            request = api.RateLimitRequest.FromString(request_bytes(tiny, descriptors))
            codes.append(stub.ShouldRateLimit(request, timeout=5).overall_code)
        expected = [OK] * tiny_limit + [OVER_LIMIT, OVER_LIMIT]
        if codes != expected:
            raise AssertionError(f"{tiny} (limit {tiny_limit}/min): codes {codes} != {expected}")
        checked.append(f"{tiny}: {tiny_limit}x OK then OVER_LIMIT")
        try:
            stub.ShouldRateLimit(api.RateLimitRequest(domain=DOMAIN), timeout=5)
            raise AssertionError("an empty descriptor list must be INVALID_ARGUMENT")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise AssertionError(f"empty descriptor list: {exc.code()}") from exc
        checked.append("empty descriptors: INVALID_ARGUMENT")
    return checked


# --- load generators -------------------------------------------------------------------


@dataclass
class Window:
    """The measured interval, in epoch seconds (after warm-up)."""

    start: float = 0.0
    end: float = 0.0


@dataclass
class GenResult:
    completed: int = 0  # requests that started inside the window and completed
    latencies_us: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    cpu_cores: float | None = None  # the generator's own CPU, when measured by itself


def classify_rls_response(response: bytes) -> str | None:
    """``OK`` / ``OVER_LIMIT`` from a serialized RateLimitResponse's first bytes; None otherwise."""
    head = response[:2]
    if head == RESPONSE_OK:
        return "OK"
    if head == RESPONSE_OVER:
        return "OVER_LIMIT"
    return None


async def python_generator(
    target: str,
    payloads: Sequence[bytes],
    connections: int,
    concurrency: int,
    window: Window,
    stop_at: float,
    method: str = METHOD,
    classify: Callable[[bytes], str | None] = classify_rls_response,
) -> GenResult:
    """``connections`` channels x ``concurrency`` tasks, raw bytes through a generic call.

    ``classify`` names each response (counted in ``codes``); None counts as an error."""
    result = GenResult()
    latencies = result.latencies_us
    errors, codes = result.errors, result.codes
    channels = [
        grpc.aio.insecure_channel(
            target,
            options=[("grpc.use_local_subchannel_pool", 1)],  # one TCP conn each
        )
        for _ in range(connections)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        count = len(payloads)

        async def worker(call: Any, offset: int, stride: int) -> None:
            index = offset
            clock, wall = time.perf_counter, time.time
            while True:
                started_wall = wall()
                if started_wall >= stop_at:
                    return
                payload = payloads[index % count]
                index += stride
                started = clock()
                try:
                    response = await call(payload, timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if window.start <= started_wall < window.end:
                        errors[exc.code().name] += 1
                    continue
                elapsed = clock() - started
                if not window.start <= started_wall < window.end:
                    continue
                latencies.append(elapsed * 1e6)
                kind = classify(response)
                if kind is None:
                    errors["unexpected_response"] += 1
                else:
                    codes[kind] += 1

        stride = connections * concurrency
        tasks = [
            worker(channels[c].unary_unary(method), c * concurrency + t, stride)
            for c in range(connections)
            for t in range(concurrency)
        ]
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    result.completed = len(latencies)
    return result


_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2_FINISHED = re.compile(r"finished in ([0-9.]+)(m?s), ([0-9.]+) req/s")


async def h2load_generator(
    target: str,
    bodies: Sequence[Path],
    connections: int,
    concurrency: int,
    warmup: float,
    duration: float,
    window: Window,
    workdir: Path,
    procs: Processes,
    method: str = METHOD,
) -> GenResult:
    """One h2load process per body file (h2load sends one body per process), connections split."""
    result = GenResult()
    share = [
        connections // len(bodies) + (1 if i < connections % len(bodies) else 0)
        for i in range(len(bodies))
    ]
    runs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    cpu_before, wall_before = children_cpu_seconds(), time.monotonic()
    for index, (body, conns) in enumerate(zip(bodies, share, strict=True)):
        log = workdir / f"h2load-{index}.log"
        out = workdir / f"h2load-{index}.out"
        argv = [
            "h2load",
            *("-D", f"{duration:g}", f"--warm-up-time={warmup:g}"),
            *("-c", str(conns), "-m", str(concurrency), "-t", "1", "-d", str(body)),
            *("-H", "content-type: application/grpc", "-H", "te: trailers"),
            f"--log-file={log}",
            f"http://{target}{method}",
        ]
        runs.append((procs.start("h2load", argv, out), log, out))
    try:
        for proc, _, out in runs:
            if await wait_exit(proc) != 0:
                tail = out.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"h2load exited {proc.returncode}:\n{tail}")
    finally:
        for proc, _, _ in runs:
            procs.stop(proc)
    # h2load's CPU over its whole life (warm-up included): reaped children only count here.
    result.cpu_cores = (children_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    start_us, end_us = window.start * 1e6, window.end * 1e6
    h2_rps = 0.0
    for _, log, out in runs:
        text = out.read_text(errors="replace")
        found = _H2_REQUESTS.search(text)
        finished = _H2_FINISHED.search(text)
        if found is None or finished is None:
            raise RuntimeError(f"cannot parse h2load output:\n{text[-2000:]}")
        _, _, _, _, failed, errored, timeout = (int(g) for g in found.groups())
        result.errors["h2load_failed"] += failed
        result.errors["h2load_errored"] += errored
        result.errors["h2load_timeout"] += timeout
        h2_rps += float(finished.group(3))
        with log.open() as lines:
            for line in lines:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                started = float(parts[0])
                if not start_us <= started < end_us:
                    continue
                if parts[1] != "200":
                    result.errors[f"http_{parts[1]}"] += 1
                    continue
                result.latencies_us.append(float(parts[2]))
    result.completed = len(result.latencies_us)
    result.notes.append(f"h2load's own req/s (sum of processes): {h2_rps:.0f}")
    return result


# --- one run -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


@dataclass
class RunResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_errors: int
    server_cores: float
    server_us_per_decision: float
    redis_cores: float
    generator_cores: float
    other_cores: float
    over_limit_share: float
    local_cache_hits: int
    window_s: float
    detail: dict[str, Any]


@dataclass
class Config:
    server: str
    store: str
    generator: str
    duration: float
    warmup: float
    connections: int
    concurrency: int
    users: int
    descriptors: int
    over_limit_share: float
    local_cache_size: int
    h2load_variants: int
    user_limit: int
    tiny_limit: int
    target: str | None
    metrics_url: str | None
    server_pid: int | None
    label: str
    runs: int
    wait_idle: float
    idle_below: float


class Bench:
    def __init__(self, config: Config, procs: Processes, workdir: Path) -> None:
        self.config = config
        self.procs = procs
        self.workdir = workdir
        self.redis_pid: int | None = None
        self.redis_url: str | None = None

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        proc = self.procs.start("redis", argv, self.workdir / "redis.log")
        self.redis_pid, self.redis_url = proc.pid, f"redis://127.0.0.1:{port}"
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def flush_redis(self) -> None:
        if self.redis_url is None:
            return
        import redis

        client = redis.Redis.from_url(self.redis_url)
        client.flushall()
        client.close()

    def start_server(self, run: int) -> tuple[subprocess.Popen[bytes], str, str | None, Path]:
        """Start mixerless (or the no-op baseline) on free ports; return once it answers."""
        grpc_port, http_port = free_port(), free_port()
        log = self.workdir / f"server-{run}.log"
        if self.config.server == "noop":
            argv = [
                sys.executable,
                str(HERE / "noop_server.py"),
                "--service",
                "rls",
                "--port",
                str(grpc_port),
            ]
            proc = self.procs.start("noop", argv, log)
            wait_grpc_ready(f"127.0.0.1:{grpc_port}", proc, log, timeout=30)
            return proc, f"127.0.0.1:{grpc_port}", None, log
        policies = self.workdir / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "edge.yaml").write_text(
            policy_yaml(self.config.user_limit, self.config.tiny_limit)
        )
        binary = shutil.which("mixerless", path=str(Path(sys.executable).parent)) or "mixerless"
        argv = [
            *(binary, "serve", "--policies", str(policies), "--host", "127.0.0.1"),
            *("--ratelimit-port", str(grpc_port), "--http-port", str(http_port)),
            *("--local-cache-size", str(self.config.local_cache_size)),
        ]
        if self.config.store == "redis":
            assert self.redis_url is not None
            argv += ["--redis", self.redis_url]
        proc = self.procs.start("mixerless", argv, log)
        wait_ready(f"http://127.0.0.1:{http_port}/readyz", proc, log, timeout=30)
        return proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/metrics", log

    async def wait_idle(self) -> float:
        """Wait (up to ``--wait-idle`` s) until other processes use < ``--idle-below`` cores."""
        return await wait_for_idle(self.config.wait_idle, self.config.idle_below)

    async def run_once(self, run: int) -> RunResult:
        config = self.config
        idle_before = await self.wait_idle()
        nonce = f"{os.getpid()}x{run}x{int(time.time())}"
        server: subprocess.Popen[bytes] | None = None
        server_log: Path | None = None
        server_pid: int | None
        if config.target is None:
            self.flush_redis()
            started, target, metrics_url, server_log = await asyncio.to_thread(
                self.start_server, run
            )
            server, server_pid = started, started.pid
        else:
            target, metrics_url = config.target, config.metrics_url
            server_pid = config.server_pid
        try:
            if config.server == "noop":
                checked = ["skipped: the no-op baseline answers OK to everything"]
            else:
                checked = await asyncio.to_thread(
                    preflight, target, config.descriptors, config.tiny_limit, nonce
                )
            result = await self._drive(run, nonce, target, metrics_url, server_pid, checked)
            result.detail["busy_cores_before_run"] = idle_before
        finally:
            if server is not None:
                await asyncio.to_thread(self.procs.stop, server)
        if server_log is not None:
            result.detail["server_log_problems"] = self._log_problems(server_log)
        return result

    def _log_problems(self, log: Path) -> list[str]:
        """Error, warning (other than the in-memory notice) and traceback lines of a run."""
        return log_problems(log)

    async def _drive(
        self,
        run: int,
        nonce: str,
        target: str,
        metrics_url: str | None,
        server_pid: int | None,
        checked: list[str],
    ) -> RunResult:
        config = self.config
        names = user_names(config.users, config.over_limit_share, nonce)
        window = Window()
        begin = time.time()
        window.start = begin + config.warmup
        window.end = window.start + config.duration
        if config.generator == "python":
            order = list(names)
            random.Random(run).shuffle(order)
            payloads = [request_bytes(name, config.descriptors) for name in order]
            generator = asyncio.create_task(
                python_generator(
                    target,
                    payloads,
                    config.connections,
                    config.concurrency,
                    window,
                    stop_at=window.end + 0.2,
                )
            )
        else:
            bodies = []
            variants = self._h2load_users(names)
            for index, name in enumerate(variants):
                body = self.workdir / f"request-{index}.grpcframe"
                body.write_bytes(grpc_frame(request_bytes(name, config.descriptors)))
                bodies.append(body)
            generator = asyncio.create_task(
                h2load_generator(
                    target,
                    bodies,
                    config.connections,
                    config.concurrency,
                    config.warmup,
                    config.duration,
                    window,
                    self.workdir,
                    self.procs,
                )
            )
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
        return self._summarise(before, after, outcome, checked)

    def _h2load_users(self, names: list[str]) -> list[str]:
        """One user per h2load process; ``over_limit_share`` of them are tiny-* users."""
        variants = max(1, min(self.config.h2load_variants, self.config.connections))
        tiny = round(variants * self.config.over_limit_share)
        if self.config.over_limit_share > 0:
            tiny = max(tiny, 1)
        tiny_names = [n for n in names if n.startswith("tiny-")] or ["tiny-none"]
        user_list = [n for n in names if n.startswith("user-")] or ["user-none"]
        chosen = [tiny_names[i % len(tiny_names)] for i in range(tiny)]
        step = max(1, len(user_list) // max(1, variants - tiny))
        chosen += [user_list[(i * step) % len(user_list)] for i in range(variants - tiny)]
        return chosen

    def _sample(self, server_pid: int | None, metrics_url: str | None) -> dict[str, Any]:
        return {
            "wall": time.time(),
            "server_cpu": tree_cpu_seconds(server_pid) if server_pid else float("nan"),
            "redis_cpu": tree_cpu_seconds(self.redis_pid) if self.redis_pid else 0.0,
            "self_cpu": self_cpu_seconds(),
            "machine_busy": machine_busy_seconds(),
            "metrics": scrape(metrics_url),
            "redis_commands": self._redis_commands(),
        }

    def _redis_commands(self) -> Counter[str]:
        """Calls per command on our redis-server (``INFO commandstats``), to see batching."""
        found: Counter[str] = Counter()
        if self.redis_url is None:
            return found
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            for name, stats in client.info("commandstats").items():
                found[name.removeprefix("cmdstat_")] = int(stats["calls"])
        finally:
            client.close()
        return found

    def _summarise(
        self,
        before: dict[str, Any],
        after: dict[str, Any],
        outcome: GenResult,
        checked: list[str],
    ) -> RunResult:
        wall = after["wall"] - before["wall"]
        metrics: Counter[str] = after["metrics"] - before["metrics"]
        redis_commands: Counter[str] = after["redis_commands"] - before["redis_commands"]
        redis_commands.pop("info", None)
        decisions = metrics["result|ok"] + metrics["result|over_limit"]
        server_errors = (
            sum(
                v
                for k, v in metrics.items()
                if k.startswith("result|") and k not in ("result|ok", "result|over_limit")
            )
            + metrics["backend_errors"]
        )
        server_cpu = after["server_cpu"] - before["server_cpu"]
        if outcome.cpu_cores is not None:
            generator_cores = outcome.cpu_cores
        else:
            generator_cores = (after["self_cpu"] - before["self_cpu"]) / wall
        latencies = sorted(outcome.latencies_us)
        ours = (
            server_cpu / wall
            + (after["redis_cpu"] - before["redis_cpu"]) / wall
            + (after["self_cpu"] - before["self_cpu"]) / wall
            + (generator_cores if outcome.cpu_cores is not None else 0.0)
        )
        other_cores = max(0.0, (after["machine_busy"] - before["machine_busy"]) / wall - ours)
        window_s = self.config.duration
        rps = outcome.completed / window_s
        if decisions:
            over_share = metrics["result|over_limit"] / decisions
        elif outcome.codes:
            over_share = outcome.codes["OVER_LIMIT"] / max(1, sum(outcome.codes.values()))
        else:
            over_share = float("nan")
        return RunResult(
            rps=rps,
            p50_ms=percentile(latencies, 0.50) / 1000,
            p90_ms=percentile(latencies, 0.90) / 1000,
            p99_ms=percentile(latencies, 0.99) / 1000,
            max_ms=(latencies[-1] / 1000) if latencies else float("nan"),
            errors=sum(outcome.errors.values()),
            server_errors=server_errors,
            server_cores=server_cpu / wall,
            server_us_per_decision=(server_cpu / (decisions or outcome.completed or 1)) * 1e6,
            redis_cores=(after["redis_cpu"] - before["redis_cpu"]) / wall,
            generator_cores=generator_cores,
            other_cores=other_cores,
            over_limit_share=over_share,
            local_cache_hits=metrics["hits|over_limit_with_local_cache"],
            window_s=wall,
            detail={
                "server_decisions_in_window": decisions,
                "server_decisions_per_s": decisions / wall if wall else 0.0,
                "server_counters": dict(metrics),
                "redis_commands": dict(redis_commands),
                # Commands run by a script are counted too; EVAL/EVALSHA calls are round trips
                # (fewer than 1 per decision when the store coalesces concurrent requests).
                "redis_script_calls_per_decision": (
                    (redis_commands["evalsha"] + redis_commands["eval"]) / decisions
                    if decisions and redis_commands
                    else None
                ),
                "client_errors": dict(outcome.errors),
                "client_codes": dict(outcome.codes),
                "preflight": checked,
                "notes": outcome.notes,
            },
        )


# --- reporting -------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import redis
    from google.protobuf import __version__ as protobuf_version

    from services import __version__

    def command(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None:
            return "not installed"
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "mixerless": __version__,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "redis-py": redis.__version__,
        "redis-server": command(["redis-server", "--version"]),
        "h2load": command(["h2load", "--version"]),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
    }


COLUMNS = [
    ("run", 6),
    ("dec/s", 8),
    ("p50 ms", 7),
    ("p90 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("errors", 6),
    ("srv err", 7),
    ("srv cores", 9),
    ("µs/dec", 7),
    ("redis", 6),
    ("gen", 5),
    ("other", 5),
    ("over%", 6),
    ("lc hits", 8),
]


def table_line(values: Sequence[str], columns: Sequence[tuple[str, int]] = COLUMNS) -> str:
    """One line of a right-aligned text table; ``columns`` are (title, width)."""
    return "  ".join(v.rjust(w) for v, (_, w) in zip(values, columns, strict=True))


def table_header(columns: Sequence[tuple[str, int]] = COLUMNS) -> str:
    return "  ".join(name.rjust(width) for name, width in columns)


def row(name: str, r: dict[str, Any]) -> str:
    values = [
        name,
        f"{r['rps']:.0f}",
        f"{r['p50_ms']:.2f}",
        f"{r['p90_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        f"{r['max_ms']:.1f}",
        str(int(r["errors"])),
        str(int(r["server_errors"])),
        f"{r['server_cores']:.2f}",
        f"{r['server_us_per_decision']:.0f}",
        f"{r['redis_cores']:.2f}",
        f"{r['generator_cores']:.2f}",
        f"{r['other_cores']:.2f}",
        f"{100 * r['over_limit_share']:.1f}",
        str(int(r["local_cache_hits"])),
    ]
    return table_line(values)


NUMERIC = [
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "server_errors",
    "server_cores",
    "server_us_per_decision",
    "redis_cores",
    "generator_cores",
    "other_cores",
    "over_limit_share",
    "local_cache_hits",
    "window_s",
]


def median_of(
    runs: Sequence[Any],
    numeric: Sequence[str] = NUMERIC,
    summed: Sequence[str] = ("errors", "server_errors"),
) -> dict[str, Any]:
    """Median of each ``numeric`` figure over the runs; ``summed`` ones (errors: any error
    matters) are added up instead."""
    merged: dict[str, Any] = {}
    for name in numeric:
        values = [float(getattr(r, name)) for r in runs]
        merged[name] = sum(values) if name in summed else statistics.median(values)
    merged["rps_runs"] = [round(r.rps) for r in runs]
    return merged


# --- command line ------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every load driver here shares: run length and shape, idle waiting,
    where results go. (check_load.py adds these too.)"""
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported")
    parser.add_argument(
        "--connections",
        type=int,
        default=4,
        help="HTTP/2 connections (h2load -c; python: channels)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="streams in flight per connection (h2load -m; python: tasks per channel)",
    )
    parser.add_argument("--metrics-url", help="with --target: its /metrics URL")
    parser.add_argument("--server-pid", type=int, help="with --target: its pid, for CPU figures")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for the machine to be idle (0: off)",
    )
    parser.add_argument(
        "--idle-below",
        type=float,
        default=0.25,
        help="'idle': all processes together use fewer cores than this over 1 s",
    )
    parser.add_argument("--label", default="", help="name of this configuration in the results")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp directory")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Drive load at mixerless's ShouldRateLimit and report decisions/s, latency "
        "percentiles, errors and server CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server",
        choices=("mixerless", "noop"),
        default="mixerless",
        help="noop: loadtest/noop_server.py --service rls, an always-OK grpc.aio server "
        "(calibration baseline)",
    )
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument(
        "--generator",
        choices=("auto", "h2load", "python"),
        default="auto",
        help="auto: h2load when installed, else python",
    )
    add_run_arguments(parser)
    parser.add_argument("--users", type=int, default=10_000, help="distinct users")
    parser.add_argument(
        "--descriptors",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: [(user,u)]; 2: also [(generic_key,product),(user,u)]",
    )
    parser.add_argument(
        "--over-limit-share",
        type=float,
        default=0.0,
        help="share of users (python) or h2load processes with a tiny limit, "
        "i.e. answered OVER_LIMIT after the first few requests",
    )
    parser.add_argument(
        "--local-cache-size",
        type=int,
        default=0,
        help="passed to mixerless serve (over-limit keys kept in memory)",
    )
    parser.add_argument(
        "--h2load-variants",
        type=int,
        default=0,
        help="h2load processes, each sending one user's request (0: one per connection)",
    )
    parser.add_argument(
        "--user-limit", type=int, default=1_000_000_000, help="per-minute limit of each user-* user"
    )
    parser.add_argument(
        "--tiny-limit", type=int, default=5, help="per-minute limit of each tiny-* user"
    )
    parser.add_argument(
        "--target",
        help="host:port of a running server (no server started); "
        "it must serve the policy from --print-policy",
    )
    parser.add_argument(
        "--print-policy", action="store_true", help="print the benchmark policy YAML and exit"
    )
    args = parser.parse_args(argv)
    if args.generator == "auto":
        args.generator = "h2load" if shutil.which("h2load") else "python"
    if args.generator == "h2load" and shutil.which("h2load") is None:
        parser.error("h2load is not installed (apt-get install -y nghttp2-client)")
    if args.server == "noop" and (args.store == "redis" or args.target is not None):
        parser.error("--server noop starts its own no-op server and has no store")
    if args.target is not None and args.store == "redis":
        parser.error("--store only applies to servers this driver starts; drop it with --target")
    if not 0.0 <= args.over_limit_share <= 1.0:
        parser.error("--over-limit-share must be between 0 and 1")
    if min(args.connections, args.concurrency, args.runs, args.users) < 1:
        parser.error("--connections, --concurrency, --runs and --users must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


def config_from(args: argparse.Namespace) -> Config:
    variants = args.h2load_variants or args.connections
    label = args.label or (
        f"{args.store if args.server == 'mixerless' else 'noop'} {args.descriptors}desc "
        f"{args.generator}"
        + (f" over{args.over_limit_share:g}" if args.over_limit_share else "")
        + (f" lc{args.local_cache_size}" if args.local_cache_size else "")
    )
    return Config(
        server=args.server,
        store=args.store,
        generator=args.generator,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        concurrency=args.concurrency,
        users=args.users,
        descriptors=args.descriptors,
        over_limit_share=args.over_limit_share,
        local_cache_size=args.local_cache_size,
        h2load_variants=variants,
        user_limit=args.user_limit,
        tiny_limit=args.tiny_limit,
        target=args.target,
        metrics_url=args.metrics_url,
        server_pid=args.server_pid,
        label=label,
        runs=args.runs,
        wait_idle=args.wait_idle,
        idle_below=args.idle_below,
    )


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so every ``finally`` runs and children are stopped."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def bench_main(config: Config, procs: Processes, workdir: Path) -> list[RunResult]:
    bench = Bench(config, procs, workdir)
    if config.target is None and config.store == "redis":
        await asyncio.to_thread(bench.start_redis)
    results = []
    print(
        f"# {config.label}: {config.generator}, {config.connections} conns x "
        f"{config.concurrency} streams, {config.duration:g}s (+{config.warmup:g}s warm-up)"
    )
    print(table_header())
    for run in range(1, 1 + config.runs):
        result = await bench.run_once(run)
        results.append(result)
        print(row(str(run), asdict(result)), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_policy:
        print(policy_yaml(args.user_limit, args.tiny_limit), end="")
        return 0
    config = config_from(args)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="rls_load-"))
    failed = True
    try:
        with terminate_on_sigterm():
            results = asyncio.run(bench_main(config, procs, workdir))
        failed = False
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, AssertionError, OSError, grpc.RpcError) as exc:
        print(f"rls_load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep_logs or failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    median = median_of(results)
    print(row("median", median))
    line = {
        "ts": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": config.label,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "config": asdict(config),
        "median": median,
        "runs": [asdict(r) for r in results],
        "versions": versions(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as out:
        out.write(json.dumps(line, default=str) + "\n")
    print(f"appended to {args.results}")
    errors = median["errors"] + median["server_errors"]
    return 0 if errors == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
