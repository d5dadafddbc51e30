"""Load driver for mixerless's authz service (``envoy.service.auth.v3.Authorization/Check``).

It starts its own ``mixerless serve --only authz`` on free ports with a generated policy
directory (or the no-op ``noop_server.py --service authz``), or targets an existing
server with ``--target``.
Before each run it checks a few answers, so a broken server cannot be benchmarked, then
drives closed-loop load with h2load (one pre-serialized CheckRequest per h2load process)
or the harness's grpc.aio generator (any number of distinct CheckRequests).

Scenarios (``--scenario``):

* ``none``: an empty policy directory; every request is allowed, no token is looked at.
  The cost of the Check plumbing.
* ``policies20-cached-jwt``: 20 AuthorizationPolicies (8 DENY, 12 ALLOW; paths, methods,
  hosts, remoteIpBlocks/ipBlocks, request.headers, JWT claims, requestPrincipals) and a
  RequestAuthentication with an inline RS256 JWKS. Every request carries the SAME valid
  token, so the server's verified-token cache answers after the first request.
* ``policies20-fresh-rs256``: the same policies; every request carries a DIFFERENT valid
  token from a pool larger than the server's token cache, so every request is a fresh
  RS256 verification. Needs the Python generator (h2load sends one body per process).
* ``noop``: ``noop_server.py --service authz``, an always-OK grpc.aio + uvloop server: the ceiling.
* ``noop-sync``: the same on grpcio's threaded server (4 threads).

Each invocation appends one JSON line to ``loadtest/out/results.jsonl`` and prints a table.
The requests, tokens and policies are in ``scenarios/authz.py``; the machinery (processes,
generators, CPU accounting, run loop, report) in ``harness/``. See ``loadtest/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import OUT_DIR
from harness.bench import Bench, Measured, measure_runs, print_title, run_driver
from harness.cpu import thread_cpu
from harness.generators import GenResult, Window, grpc_frame, h2load_generator, python_generator
from harness.options import add_run_arguments, cpu_set
from harness.processes import Processes, Server, free_port, start_mixerless, start_noop_server
from harness.report import append_result, result_line, served_code, table_line
from harness.report import versions as tool_versions
from harness.stats import median_of
from scenarios.authz import (
    METHOD,
    TOKEN_LIFETIME,
    check_request,
    claims,
    classify_check,
    load_or_create_key,
    mint,
    policy_files,
    request_id,
    tampered,
    token_pool,
)

from services import envoy_api as api
from services.authz.jwt.authenticate import DEFAULT_CACHE_SIZE as SERVER_TOKEN_CACHE

SCENARIOS = ("none", "policies20-cached-jwt", "policies20-fresh-rs256", "noop", "noop-sync")
NOOPS = {"noop": "aio", "noop-sync": "sync"}  # scenario -> noop_server.py --flavour


# --- correctness check before every run ----------------------------------------------------


def _expect(
    what: str,
    response: Any,
    grpc_code: int,
    http_status: int | None = None,
    body: str | None = None,
) -> None:
    if response.status.code != grpc_code:
        raise AssertionError(f"{what}: gRPC status {response.status.code} != {grpc_code}")
    if http_status is not None and response.denied_response.status.code != http_status:
        raise AssertionError(
            f"{what}: HTTP {response.denied_response.status.code} != {http_status}: {response}"
        )
    if body is not None and response.denied_response.body != body:
        raise AssertionError(f"{what}: body {response.denied_response.body!r} != {body!r}")


def preflight(
    target: str, scenario: str, key: rsa.RSAPrivateKey, token: str, samples: Sequence[str]
) -> list[str]:
    """Check a few answers; return what was checked. Raises ``AssertionError`` when wrong."""
    checked: list[str] = []
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        raw = channel.unary_unary(METHOD)

        def check(what: str, body: bytes) -> Any:
            return api.CheckResponse.FromString(raw(body, timeout=5))

        valid = check("valid token", check_request(token, request_id=request_id(1)))
        _expect("valid token", valid, 0)
        if scenario in NOOPS:
            return ["valid token: OK (no-op server)"]
        no_token = check("no token", check_request(None, request_id=request_id(2)))
        bad = check("tampered token", check_request(tampered(token), request_id=request_id(3)))
        if scenario == "none":
            _expect("no token", no_token, 0)
            _expect("tampered token, no RequestAuthentication", bad, 0)
            if valid.ok_response.headers or valid.ok_response.headers_to_remove:
                raise AssertionError(f"no policies, yet header changes: {valid}")
            return ["valid token, no token and tampered token: OK (no policies, no JWT rules)"]
        added = {h.header.key: h.header.value for h in valid.ok_response.headers}
        sub = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["sub"]
        if added.get("x-user-id") != sub:
            raise AssertionError(f"valid token: x-user-id {added.get('x-user-id')!r} != {sub!r}")
        if "authorization" not in valid.ok_response.headers_to_remove:
            raise AssertionError(f"valid token: authorization not removed: {valid}")
        checked.append(f"valid token: OK, x-user-id={sub}, authorization removed")
        _expect("no token", no_token, 7, 403, "RBAC: access denied")
        checked.append("no token: PERMISSION_DENIED 403 (require-jwt)")
        _expect("tampered token", bad, 16, 401, "Jwt verification fails")
        checked.append("tampered token: UNAUTHENTICATED 401 'Jwt verification fails'")
        now = int(time.time())
        expired = mint(key, claims(7, now - 7200, now - 3600))
        response = check("expired", check_request(expired, request_id=request_id(4)))
        _expect("expired token", response, 16, 401, "Jwt is expired")
        checked.append("expired token: UNAUTHENTICATED 401 'Jwt is expired'")
        response = check("admin", check_request(token, request_id=request_id(5), path="/admin/x"))
        _expect("/admin without staff", response, 7, 403)
        checked.append("/admin/x without groups=staff: 403 (admin-is-staff-only)")
        response = check(
            "blocked", check_request(token, request_id=request_id(6), client_ip="203.0.113.9")
        )
        _expect("client 203.0.113.9 (XFF)", response, 7, 403)
        checked.append("client 203.0.113.9 via X-Forwarded-For: 403 (deny-blocked-networks)")
        response = check("delete", check_request(token, request_id=request_id(7), method="DELETE"))
        _expect("DELETE (no ALLOW matches)", response, 7, 403)
        checked.append("DELETE: 403 (no ALLOW policy matches)")
        for index, sample in enumerate(samples):
            response = check("pool", check_request(sample, request_id=request_id(8 + index)))
            _expect(f"pool token {index}", response, 0)
        if samples:
            checked.append(f"{len(samples)} tokens from the pool: OK")
    return checked


# --- one run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # client-side: transport errors and answers other than OK
    server_errors: int  # server-side result="error" and backend errors
    denied: int  # server-side deny + unauthenticated in the window (all should be allowed)
    server_cores: float
    server_us_per_check: float
    generator_cores: float
    other_cores: float
    window_s: float
    detail: dict[str, Any]


NUMERIC = [
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "server_errors",
    "denied",
    "server_cores",
    "server_us_per_check",
    "generator_cores",
    "other_cores",
    "window_s",
]
SUMMED = ("errors", "server_errors", "denied")


@dataclass
class Config:
    scenario: str
    generator: str
    duration: float
    warmup: float
    connections: int
    concurrency: int
    h2load_procs: int
    pool: int
    target: str | None
    metrics_url: str | None
    server_pid: int | None
    label: str
    runs: int
    wait_idle: float
    idle_below: float
    max_other: float
    retries: int
    key_file: str
    server_tree: str | None
    server_cpus: tuple[int, ...] | None = None  # pin the server started here


class CheckBench(Bench):
    metrics_service = "authz"
    log_ignore = ("policy directory has no policy files",)

    def __init__(self, config: Config, procs: Processes, workdir: Path) -> None:
        super().__init__(config, procs, workdir)
        self.config: Config = config
        self.key = load_or_create_key(Path(config.key_file))
        now = int(time.time())
        self.token = mint(key=self.key, payload=claims(0, now, now + TOKEN_LIFETIME))
        self.pool: list[str] = []
        if config.scenario == "policies20-fresh-rs256":
            self.pool = token_pool(self.key, config.pool)
        self.payloads = self._payloads()
        self.starts = 0  # servers started, so a repeated run gets its own files

    def _payloads(self) -> list[bytes]:
        if self.pool:
            return [
                check_request(token, request_id=request_id(1000 + n))
                for n, token in enumerate(self.pool)
            ]
        return [check_request(self.token, request_id=request_id(1000))]

    def start_server(self, run: int) -> Server:
        self.starts += 1
        tag = f"{run}-{self.starts}"
        log = self.workdir / f"server-{tag}.log"
        if self.config.scenario in NOOPS:
            return start_noop_server(
                self.procs,
                "authz",
                log,
                NOOPS[self.config.scenario],
                cpus=cpu_set(self.config.server_cpus),
            )
        policies = self.workdir / f"policies-{tag}"
        policies.mkdir()
        for name, text in policy_files(self.config.scenario, self.key).items():
            (policies / name).write_text(text)
        grpc_port = free_port()
        serve = ["--only", "authz", "--policies", str(policies), "--authz-port", str(grpc_port)]
        tree, cpus = self.config.server_tree, cpu_set(self.config.server_cpus)
        return start_mixerless(self.procs, serve, grpc_port, log, tree, cpus)

    def check_server(self, target: str) -> list[str]:
        pool = self.pool
        samples = [pool[0], pool[len(pool) // 2], pool[-1]] if pool else []
        return preflight(target, self.config.scenario, self.key, self.token, samples)

    def generator(self, run: int, target: str, window: Window) -> Coroutine[Any, Any, GenResult]:
        config = self.config
        if config.generator == "python":
            return python_generator(
                target,
                self.payloads,
                config.connections,
                config.concurrency,
                window,
                stop_at=window.end + 0.2,
                method=METHOD,
                classify=classify_check,
            )
        body = self.workdir / "check-request.grpcframe"
        body.write_bytes(grpc_frame(self.payloads[0]))
        return h2load_generator(
            target,
            [body] * max(1, min(config.h2load_procs, config.connections)),
            config.connections,
            config.concurrency,
            config.warmup,
            config.duration,
            window,
            self.workdir,
            self.procs,
            method=METHOD,
        )

    def sample(self, server_pid: int | None) -> dict[str, Any]:
        return {"threads": thread_cpu(server_pid)}

    def summarise(self, measured: Measured, checked: list[str]) -> RunResult:
        wall, metrics, outcome = measured.wall, measured.metrics, measured.outcome
        allowed = metrics["result|allow"]
        denied = metrics["result|deny"] + metrics["result|unauthenticated"]
        decisions = allowed + denied
        latencies = measured.latencies_us
        not_ok = sum(v for k, v in outcome.codes.items() if k != "OK")
        threads = {
            name: round(seconds / wall, 3) for name, seconds in measured.delta("threads").items()
        }
        return RunResult(
            **measured.figures(self.config.duration),
            errors=sum(outcome.errors.values()) + not_ok,
            server_errors=metrics["result|error"] + metrics["backend_errors"],
            denied=denied,
            server_us_per_check=(measured.server_cpu / (decisions or outcome.completed or 1)) * 1e6,
            detail={
                "server_checks_in_window": decisions,
                "server_checks_per_s": decisions / wall if wall else 0.0,
                "server_counters": dict(metrics),
                "server_thread_cores": threads,
                "client_errors": dict(outcome.errors),
                "client_codes": dict(outcome.codes),
                "latency_over_ms": {
                    str(limit): sum(1 for v in latencies if v > limit * 1000)
                    for limit in (25, 50, 100, 200)
                },
                "distinct_requests": len(self.payloads),
                "token_bytes": len(self.pool[0] if self.pool else self.token),
                "request_bytes": len(self.payloads[0]),
                "preflight": checked,
                "notes": outcome.notes,
            },
        )


# --- reporting -------------------------------------------------------------------------------

COLUMNS = [
    ("run", 6),
    ("checks/s", 8),
    ("p50 ms", 7),
    ("p90 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("errors", 6),
    ("srv err", 7),
    ("denied", 6),
    ("srv cores", 9),
    ("µs/check", 8),
    ("gen", 5),
    ("other", 5),
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
        str(int(r["denied"])),
        f"{r['server_cores']:.2f}",
        f"{r['server_us_per_check']:.0f}",
        f"{r['generator_cores']:.2f}",
        f"{r['other_cores']:.2f}",
    ]
    return table_line(values, COLUMNS)


def versions(server_tree: str | None) -> dict[str, str]:
    import cryptography

    found = tool_versions()
    found["cryptography"] = cryptography.__version__
    found |= served_code(server_tree)
    return found


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Drive load at mixerless's ext_authz Check and report checks/s, latency "
        "percentiles, errors and server CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="policies20-cached-jwt")
    parser.add_argument(
        "--generator",
        choices=("auto", "h2load", "python"),
        default="auto",
        help="auto: python for policies20-fresh-rs256 (needs distinct bodies), else h2load "
        "when installed",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--h2load-procs",
        type=int,
        default=4,
        help="h2load processes (all send the same request; connections are split between them)",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=20_000,
        help="policies20-fresh-rs256: distinct tokens, each sent once per pass "
        f"(must exceed the server's token cache, {SERVER_TOKEN_CACHE})",
    )
    parser.add_argument(
        "--key-file",
        default=str(OUT_DIR / "check_load-key.pem"),
        help="RSA signing key (created on first use); --print-policy's JWKS is its public key",
    )
    parser.add_argument(
        "--target",
        help="host:port of a running server (none started); it must serve --print-policy",
    )
    parser.add_argument(
        "--server-tree",
        help="run `mixerless serve` from this source tree's `services` package instead of the "
        "working tree (e.g. a `git archive HEAD services` extract, while others edit services/)",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        help="a run during which other processes used more cores than this is discarded and "
        "repeated (0: keep every run)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repetitions of a discarded run; the last one is kept whatever its 'other'",
    )
    parser.add_argument(
        "--print-policy",
        action="store_true",
        help="print the scenario's policy YAML (for --target) and exit",
    )
    args = parser.parse_args(argv)
    fresh = args.scenario == "policies20-fresh-rs256"
    if args.generator == "auto":
        args.generator = "h2load" if shutil.which("h2load") and not fresh else "python"
    if args.generator == "h2load" and shutil.which("h2load") is None:
        parser.error("h2load is not installed (apt-get install -y nghttp2-client)")
    if fresh and args.generator == "h2load":
        parser.error(
            "policies20-fresh-rs256 needs --generator python: h2load sends one body per "
            "process, so its tokens would repeat and be answered from the server's cache"
        )
    if fresh and args.pool <= SERVER_TOKEN_CACHE:
        parser.error(f"--pool must exceed the server's token cache ({SERVER_TOKEN_CACHE})")
    if args.server_tree and not (Path(args.server_tree) / "services" / "cli.py").is_file():
        parser.error(f"--server-tree {args.server_tree}: no services/cli.py there")
    if args.server_tree and (args.target is not None or args.scenario in NOOPS):
        parser.error("--server-tree only applies to the mixerless server this driver starts")
    if args.scenario in NOOPS and args.target is not None:
        parser.error("--scenario noop starts its own no-op server")
    if min(args.connections, args.concurrency, args.runs, args.h2load_procs) < 1:
        parser.error("--connections, --concurrency, --runs and --h2load-procs must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.retries < 0:
        parser.error("--duration must be positive, --warmup and --retries not negative")
    return args


def config_from(args: argparse.Namespace) -> Config:
    return Config(
        scenario=args.scenario,
        generator=args.generator,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        concurrency=args.concurrency,
        h2load_procs=args.h2load_procs,
        pool=args.pool if args.scenario == "policies20-fresh-rs256" else 1,
        target=args.target,
        metrics_url=args.metrics_url,
        server_pid=args.server_pid,
        label=args.label or f"authz {args.scenario} {args.generator}",
        runs=args.runs,
        wait_idle=args.wait_idle,
        idle_below=args.idle_below,
        max_other=args.max_other,
        retries=args.retries,
        key_file=args.key_file,
        server_tree=str(Path(args.server_tree).resolve()) if args.server_tree else None,
        server_cpus=tuple(sorted(args.server_cpus)) if args.server_cpus else None,
    )


async def bench_main(
    config: Config, procs: Processes, workdir: Path, discarded: list[RunResult]
) -> list[RunResult]:
    bench = await asyncio.to_thread(CheckBench, config, procs, workdir)
    print_title(
        config,
        COLUMNS,
        f", {len(bench.payloads)} distinct request(s) of {len(bench.payloads[0])} bytes",
    )
    return await measure_runs(bench, config.runs, row, config.max_other, config.retries, discarded)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_policy:
        key = load_or_create_key(Path(args.key_file))
        files = policy_files(args.scenario, key)
        print("---\n".join(files.values()), end="")
        return 0
    config = config_from(args)
    discarded: list[RunResult] = []
    results = run_driver(
        "check_load",
        lambda procs, workdir: bench_main(config, procs, workdir, discarded),
        args.keep_logs,
    )
    if isinstance(results, int):
        return results
    median = median_of(results, NUMERIC, SUMMED)
    print(row("median", median))
    line = result_line(
        driver="check_load",
        label=config.label,
        argv=argv,
        config=config,
        median=median,
        runs=results,
        discarded_runs=[asdict(r) for r in discarded],
        versions=versions(config.server_tree),
    )
    append_result(args.results, line)
    problems = median["errors"] + median["server_errors"] + median["denied"]
    return 0 if problems == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
