"""Load driver for mixerless's rate limit service (``RateLimitService/ShouldRateLimit``).

It starts its own ``mixerless serve`` (and, with ``--store redis``, its own
``redis-server``) on free ports with a temporary policy directory, or targets an
existing server with ``--target``. Before each run it checks a few answers (so a
broken server cannot be benchmarked), then drives closed-loop load with h2load
(pre-serialized gRPC frames; cheapest generator) or a built-in grpc.aio client.

Each invocation appends one JSON line to ``loadtest/out/results.jsonl`` and prints
a table. The policy and requests are in ``scenarios/ratelimit.py``; the machinery
(processes, generators, CPU accounting, run loop, report) in ``harness/``. See
``loadtest/README.md`` for usage and caveats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from harness.bench import Bench, Measured, measure_runs, print_title, run_driver
from harness.cpu import tree_cpu_seconds
from harness.generators import GenResult, Window, grpc_frame, h2load_generator, python_generator
from harness.options import add_run_arguments, cpu_set
from harness.processes import Processes, Server, free_port, start_mixerless, start_noop_server
from harness.redis_server import RedisServer
from harness.report import append_result, result_line, table_line, versions
from harness.stats import median_of
from scenarios.ratelimit import (
    DOMAIN,
    METHOD,
    OK,
    OVER_LIMIT,
    classify_rls_response,
    policy_yaml,
    request_bytes,
    user_names,
)

from services import envoy_api as api

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


# --- one run -------------------------------------------------------------------------------


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
    counting: str
    server_tree: str | None
    server_cpus: tuple[int, ...] | None  # pin the server started here
    target: str | None
    metrics_url: str | None
    server_pid: int | None
    label: str
    runs: int
    wait_idle: float
    idle_below: float


class RlsBench(Bench):
    log_ignore = ("counting in memory",)

    def __init__(self, config: Config, procs: Processes, workdir: Path) -> None:
        super().__init__(config, procs, workdir)
        self.config: Config = config
        self.redis = RedisServer()
        self.nonce = ""

    def begin_run(self, run: int) -> None:
        self.nonce = f"{os.getpid()}x{run}x{int(time.time())}"
        if self.config.target is None:
            self.redis.flush()

    def start_server(self, run: int) -> Server:
        """Start mixerless (or the no-op baseline) on free ports; return once it answers."""
        log = self.workdir / f"server-{run}.log"
        if self.config.server == "noop":
            return start_noop_server(self.procs, "rls", log, cpus=cpu_set(self.config.server_cpus))
        policies = self.workdir / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "edge.yaml").write_text(
            policy_yaml(self.config.user_limit, self.config.tiny_limit, self.config.counting)
        )
        grpc_port = free_port()
        serve = [
            *("--policies", str(policies), "--ratelimit-port", str(grpc_port)),
            *("--local-cache-size", str(self.config.local_cache_size)),
        ]
        if self.config.store == "redis":
            assert self.redis.url is not None
            serve += ["--redis", self.redis.url]
        tree, cpus = self.config.server_tree, cpu_set(self.config.server_cpus)
        return start_mixerless(self.procs, serve, grpc_port, log, tree, cpus)

    def check_server(self, target: str) -> list[str]:
        if self.config.server == "noop":
            return ["skipped: the no-op baseline answers OK to everything"]
        config = self.config
        return preflight(target, config.descriptors, config.tiny_limit, self.nonce)

    def generator(self, run: int, target: str, window: Window) -> Coroutine[Any, Any, GenResult]:
        config = self.config
        names = user_names(config.users, config.over_limit_share, self.nonce)
        if config.generator == "python":
            order = list(names)
            random.Random(run).shuffle(order)
            payloads = [request_bytes(name, config.descriptors) for name in order]
            return python_generator(
                target,
                payloads,
                config.connections,
                config.concurrency,
                window,
                stop_at=window.end + 0.2,
                method=METHOD,
                classify=classify_rls_response,
            )
        bodies = []
        for index, name in enumerate(self._h2load_users(names)):
            body = self.workdir / f"request-{index}.grpcframe"
            body.write_bytes(grpc_frame(request_bytes(name, config.descriptors)))
            bodies.append(body)
        return h2load_generator(
            target,
            bodies,
            config.connections,
            config.concurrency,
            config.warmup,
            config.duration,
            window,
            self.workdir,
            self.procs,
            method=METHOD,
        )

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

    def sample(self, server_pid: int | None) -> dict[str, Any]:
        return {
            "redis_cpu": tree_cpu_seconds(self.redis.pid) if self.redis.pid else 0.0,
            "redis_commands": self.redis.command_calls(),
        }

    def summarise(self, measured: Measured, checked: list[str]) -> RunResult:
        wall, metrics, outcome = measured.wall, measured.metrics, measured.outcome
        redis_commands: Counter[str] = measured.delta("redis_commands")
        redis_commands.pop("info", None)
        redis_cores = measured.delta("redis_cpu") / wall
        decisions = metrics["result|ok"] + metrics["result|over_limit"]
        server_errors = (
            sum(
                v
                for k, v in metrics.items()
                if k.startswith("result|") and k not in ("result|ok", "result|over_limit")
            )
            + metrics["backend_errors"]
        )
        if decisions:
            over_share = metrics["result|over_limit"] / decisions
        elif outcome.codes:
            over_share = outcome.codes["OVER_LIMIT"] / max(1, sum(outcome.codes.values()))
        else:
            over_share = float("nan")
        return RunResult(
            **measured.figures(self.config.duration, extra_cores=redis_cores),
            errors=sum(outcome.errors.values()),
            server_errors=server_errors,
            server_us_per_decision=(measured.server_cpu / (decisions or outcome.completed or 1))
            * 1e6,
            redis_cores=redis_cores,
            over_limit_share=over_share,
            local_cache_hits=metrics["hits|over_limit_with_local_cache"],
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
    return table_line(values, COLUMNS)


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


# --- command line ------------------------------------------------------------------------


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
        "--server-tree",
        help="run `mixerless serve` from this source tree's `services` package instead of the "
        "working tree (e.g. a `git worktree` of the commit to measure)",
    )
    parser.add_argument(
        "--counting",
        choices=("exact", "leased"),
        default="exact",
        help="the limits' counting (leased: from Redis leases, with --store redis)",
    )
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
        + (" leased" if args.counting == "leased" else "")
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
        counting=args.counting,
        server_tree=str(Path(args.server_tree).resolve()) if args.server_tree else None,
        server_cpus=tuple(sorted(args.server_cpus)) if args.server_cpus else None,
        tiny_limit=args.tiny_limit,
        target=args.target,
        metrics_url=args.metrics_url,
        server_pid=args.server_pid,
        label=label,
        runs=args.runs,
        wait_idle=args.wait_idle,
        idle_below=args.idle_below,
    )


async def bench_main(config: Config, procs: Processes, workdir: Path) -> list[RunResult]:
    bench = RlsBench(config, procs, workdir)
    if config.target is None and config.store == "redis":
        await asyncio.to_thread(bench.redis.start, procs, workdir / "redis.log")
    print_title(config, COLUMNS)
    return await measure_runs(bench, config.runs, row)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_policy:
        print(policy_yaml(args.user_limit, args.tiny_limit), end="")
        return 0
    config = config_from(args)
    results = run_driver(
        "rls_load", lambda procs, workdir: bench_main(config, procs, workdir), args.keep_logs
    )
    if isinstance(results, int):
        return results
    median = median_of(results, NUMERIC)
    print(row("median", median))
    line = result_line(
        label=config.label,
        argv=argv,
        config=config,
        median=median,
        runs=results,
        versions=versions(),
    )
    append_result(args.results, line)
    errors = median["errors"] + median["server_errors"]
    return 0 if errors == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
