"""Closed-loop load generators: h2load (pre-serialized gRPC frames) and a grpc.aio client.

Both count only requests that *started* inside the measured ``Window``."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from harness.cpu import children_cpu_seconds
from harness.processes import Processes, wait_exit


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


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message (uncompressed), as h2load sends it with ``-d``."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


async def python_generator(
    target: str,
    payloads: Sequence[bytes],
    connections: int,
    concurrency: int,
    window: Window,
    stop_at: float,
    *,
    method: str,
    classify: Callable[[bytes], str | None],
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
    *,
    method: str,
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
