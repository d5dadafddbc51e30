"""One measured k6 run through one gateway stack: start the stack, check its answers, warm it
up, measure (k6 plus the CPU of every component and of the machine), check Envoy's counters,
stop it, and say what is wrong with the run, if anything."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import cpu, envoy_configs, metrics
from harness.gateway_checks import coverage, envoy_counters, preflight
from harness.k6 import GATEWAY_SCRIPT, K6Result, run_k6
from harness.processes import Processes
from harness.stacks import DEMO_POLICIES, Pinning, RunningStack, StackSpec, start_stack
from harness.tokens import PoolSpec, mint_pool, write_pool

QUOTA_LIMIT, _ = envoy_configs.quota(DEMO_POLICIES)  # policies/gateway/product-quota.yaml


@dataclass(frozen=True)
class RunPlan:
    mode: str  # closed | open
    duration_s: float
    warmup_s: float
    vus: int  # closed loop
    offered: int = 0  # open loop: requests/s
    max_vus: int = 100
    pool_users: int = 1000

    @property
    def owners(self) -> int:
        """One owner of users per VU k6 may run (the scenario's ``OWNERS``)."""
        return max(self.vus, self.max_vus)

    busy_above: float = 0.25  # cores used by other processes that make a run suspect


def _k6_env(
    stack: RunningStack, pool: Path, plan: RunPlan, duration: float, judge: dict[str, str]
) -> dict[str, str]:
    env = {
        "GATEWAY_URL": stack.gateway_url,
        "TOKENS": str(pool),
        "DURATION": f"{duration:g}s",
        "OWNERS": str(plan.owners),
        "QUOTA_LIMIT": str(QUOTA_LIMIT),
        **judge,
    }
    if plan.mode == "open":
        # Every VU made before the clock starts: a VU made mid-run costs k6 time it would
        # rather spend sending, and shows up as dropped iterations of a fast stack.
        env.update(
            {
                "RATE": str(plan.offered),
                "PRE_VUS": str(plan.max_vus),
                "MAX_VUS": str(plan.max_vus),
            }
        )
    else:
        env["VUS"] = str(plan.vus)
    return env


def measure(
    spec: StackSpec,
    plan: RunPlan,
    pinning: Pinning,
    workdir: Path,
    server_tree: str | None = None,
) -> dict[str, Any]:
    """Run ``plan`` against a fresh ``spec`` stack and return the run's record."""
    procs = Processes()
    flags: list[str] = []
    try:
        stack = start_stack(spec, procs, workdir, pinning, server_tree=server_tree)
        check_pool = mint_pool(PoolSpec(users=8, staff=1, expired=1, bad_signature=1))
        checked = preflight(stack, check_pool, QUOTA_LIMIT)
        flags += [f"preflight {problem}" for problem in checked["wrong"]]
        if plan.warmup_s > 0:
            warm = write_pool(mint_pool(PoolSpec(users=plan.owners)), workdir / "warm-tokens.json")
            run_k6(
                GATEWAY_SCRIPT,
                _k6_env(stack, warm, plan, plan.warmup_s, spec.judge),
                workdir / "warm-summary.json",
                workdir / "warm-k6.log",
                cpus=pinning.load,
            )
        users = max(plan.pool_users, plan.owners)
        pool = write_pool(mint_pool(PoolSpec(users=users)), workdir / "tokens.json")
        counters_before = envoy_counters(stack.admin_url)
        hits_before = _quota_hits(stack)
        redis_before = stack.redis.command_calls() if stack.redis is not None else None
        cpu_before = {name: cpu.tree_cpu_seconds(pid) for name, pid in stack.pids.items()}
        busy_before, driver_before, started = (
            cpu.machine_busy_seconds(),
            cpu.self_cpu_seconds(),
            time.monotonic(),
        )
        result = run_k6(
            GATEWAY_SCRIPT,
            _k6_env(stack, pool, plan, plan.duration_s, spec.judge),
            workdir / "summary.json",
            workdir / "k6.log",
            cpus=pinning.load,
        )
        wall = time.monotonic() - started
        cpu_s = {
            name: cpu.tree_cpu_seconds(pid) - cpu_before[name] for name, pid in stack.pids.items()
        }
        busy = cpu.machine_busy_seconds() - busy_before
        counters_after = envoy_counters(stack.admin_url)
        cpu_s["k6"] = result.cpu_s
        driver = cpu.self_cpu_seconds() - driver_before
        hits = _quota_hits(stack)
        redis_per_request = None
        if stack.redis is not None and redis_before is not None:
            sent = stack.redis.command_calls() - redis_before
            sent.pop("info", None)  # this function's own INFO commandstats
            redis_per_request = {
                name: round(calls / max(result.requests, 1), 3) for name, calls in sent.items()
            }
        counted = None if hits is None or hits_before is None else hits - hits_before
        seen, problems = coverage(stack, counters_before, counters_after, result, counted)
        flags += problems
        other_cores = max(0.0, busy - sum(cpu_s.values()) - driver) / wall
        flags += _flags(result, plan, other_cores)
        return {
            "stack": spec.name,
            "about": spec.about,
            "mode": plan.mode,
            "offered": plan.offered,
            "vus": plan.vus if plan.mode == "closed" else plan.max_vus,
            "duration_s": plan.duration_s,
            "k6": result.as_dict(),
            "preflight": checked["seen"],
            "envoy_counters": seen,
            "cpu_cores": {name: round(value / wall, 3) for name, value in cpu_s.items()},
            "cpu_us_per_request": {
                name: round(1e6 * value / max(result.requests, 1), 1)
                for name, value in cpu_s.items()
            },
            "other_cores": round(other_cores, 3),
            "redis_commands_per_request": redis_per_request,
            "bound_by": bound_by(pinning, {name: value / wall for name, value in cpu_s.items()}),
            "flags": flags,
        }
    finally:
        procs.stop_all()


def _quota_hits(stack: RunningStack) -> int | None:
    """Requests mixerless has counted against a quota so far (None: not a mixerless stack)."""
    if stack.metrics_url is None:
        return None
    found = metrics.scrape(stack.metrics_url)
    return sum(value for key, value in found.items() if key.startswith("hits|"))


def _flags(result: K6Result, plan: RunPlan, other_cores: float) -> list[str]:
    """Why this run's figures must not be used as they are (empty: nothing known)."""
    flags = []
    if result.wrong:
        flags.append(f"{result.wrong} wrong answers")
    if result.exit_code not in (0, 99):  # 99: a threshold (wrong answers) failed, counted above
        flags.append(f"k6 exited {result.exit_code}")
    if result.dropped:
        flags.append(f"k6 dropped {result.dropped} iterations (fell behind the offered rate)")
    if plan.mode == "open" and result.rate < 0.95 * plan.offered:
        flags.append(f"achieved {result.rate:,.0f}/s of {plan.offered:,}/s offered")
    if other_cores > plan.busy_above:
        flags.append(f"machine busy: other processes used {other_cores:.2f} cores")
    return flags


def bound_by(pinning: Pinning, cores: dict[str, float]) -> str:
    """Which pinned component ran out of CPU: ``k6``, ``service``, or ``-`` (neither)."""
    found = [
        name
        for name, cpus in (("k6", pinning.load), ("service", pinning.service))
        if cpus and cores.get(name, 0.0) > 0.85 * len(cpus)
    ]
    return "+".join(found) or "-"
