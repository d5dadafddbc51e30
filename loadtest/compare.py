"""Side by side through a real Envoy: every gateway stack, the same k6 scenario, one run.

    make loadtest                                  # everything, about 12 minutes on 2 cores
    make loadtest ARGS="--stacks envoy,noop-sync,mixerless-memory --rounds 3"
    .venv/bin/python loadtest/compare.py --quick   # a one-minute smoke run

Stacks (``--stacks``; default all but the last): envoy, noop-aio, noop-sync, in-proxy,
mixerless-memory, mixerless-redis, mixerless-leased, mixerless-2workers (``harness/stacks.py``
says what each is). Each run starts a
fresh stack on free loopback ports, checks its answers (valid token 200, missing 403, bad
signature 401, over quota 429), warms it up, drives ``k6/gateway.js`` through it, checks that
Envoy's filter counters cover every request, and stops it.

* **Closed loop:** ``--rounds`` rounds; in each, every stack runs once, in alternating order
  (A B C ..., then C B A ...), so drift in the machine's load falls on all alike.
* **Open loop:** for each ``--rates`` value, every stack at that offered rate (orders
  alternate too).

Prints req/s, p50/p90/p99 and CPU per request per component, with ratios against the
baselines, then writes one JSON line (``loadtest/out/compare.jsonl``) and three PNG plots.
A run with wrong answers, uncovered requests, dropped iterations or a busy machine is
flagged (``*``) and named under the table; medians are taken over unflagged runs when
there are any.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import OUT_DIR, plots
from harness.gateway_runs import RunPlan, measure
from harness.k6 import find_k6
from harness.processes import terminate_on_sigterm
from harness.report import append_result, versions
from harness.stacks import STACKS, Pinning, with_baseline

from services.demo.runner import find_envoy

BASELINES = ("envoy", "noop-aio", "noop-sync")
STARTUP_S = 4.0  # starting a stack, checking it, minting tokens: a rough figure for the ETA


def _cpus(text: str) -> frozenset[int] | None:
    return None if text in ("", "any") else frozenset(int(c) for c in text.split(","))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ",".join(name for name, spec in STACKS.items() if spec.by_default)
    parser.add_argument("--stacks", default=default, help=f"comma-separated (default: {default})")
    parser.add_argument("--rounds", type=int, default=2, help="closed-loop rounds (default 2)")
    parser.add_argument("--duration", type=float, default=15, help="closed-loop seconds per run")
    parser.add_argument(
        "--warmup", type=float, default=3, help="seconds of warm-up before each run"
    )
    parser.add_argument(
        "--vus", type=int, default=50, help="closed-loop virtual users (default 50)"
    )
    parser.add_argument(
        "--rates", default="500,1000,2000,3000", help="open-loop offered rates; '' skips"
    )
    parser.add_argument("--open-duration", type=float, default=10, help="open-loop seconds per run")
    parser.add_argument("--max-vus", type=int, default=100, help="open loop: most VUs k6 may use")
    parser.add_argument(
        "--service-cpus", default="1", help="CPUs of the Python service (default 1)"
    )
    parser.add_argument("--load-cpus", default="0", help="CPUs of k6 (default 0)")
    parser.add_argument("--envoy-cpus", default="any", help="CPUs of Envoy (default any)")
    parser.add_argument("--redis-cpus", default="any", help="CPUs of redis-server (default any)")
    parser.add_argument("--envoy-concurrency", type=int, default=2, help="Envoy worker threads")
    parser.add_argument(
        "--busy-above", type=float, default=0.25, help="flag runs where others used more cores"
    )
    parser.add_argument(
        "--baseline",
        help="another checkout: adds <stack>@baseline for each mixerless stack, run from it",
    )
    parser.add_argument("--server-tree", help="run mixerless from this source tree instead")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for plots and logs (default loadtest/out/compare-<time>)",
    )
    parser.add_argument(
        "--results", type=Path, default=OUT_DIR / "compare.jsonl", help="JSON lines file"
    )
    parser.add_argument("--replay", type=Path, help="only redraw tables and plots from a JSON file")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round of 4 s, open loop at 200/s"
    )
    return parser


class Progress:
    def __init__(self, planned: list[float]) -> None:
        self.left = planned
        self.done = 0
        self.total = len(planned)

    def show(self, what: str) -> None:
        remaining = sum(self.left[self.done :])
        print(
            f"[{self.done + 1}/{self.total}] {what}  (about {remaining / 60:.1f} min left)",
            flush=True,
        )

    def step(self) -> None:
        self.done += 1


def _order(stacks: list[str], index: int) -> list[str]:
    return stacks if index % 2 == 0 else list(reversed(stacks))


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r["k6"][key] for r in plots.usable(runs)]
    return statistics.median(values) if values else float("nan")


def closed_table(runs: list[dict[str, Any]], stacks: list[str]) -> list[str]:
    by = {s: [r for r in runs if r["stack"] == s and r["mode"] == "closed"] for s in stacks}
    rate = {s: _median(by[s], "rate") for s in stacks}
    bases = [b for b in BASELINES if b in stacks]
    head = ["stack", "req/s (rounds)", "p50 ms", "p90 ms", "p99 ms"]
    head += [f"x {b}" for b in bases] + ["CPU µs/req: envoy / service / redis / k6", "bound by"]
    head += ["Redis commands/req"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stacks:
        if not by[s]:
            continue
        rounds = " / ".join(f"{r['k6']['rate']:,.0f}{'*' if r['flags'] else ''}" for r in by[s])
        usable = plots.usable(by[s])
        cpu = [
            f"{statistics.median(r['cpu_us_per_request'].get(c, 0.0) for r in usable):,.0f}"
            for c in ("envoy", "service", "redis", "k6")
        ]
        bound = statistics.mode(r["bound_by"] for r in usable)
        row = [s, f"**{rate[s]:,.0f}** ({rounds})"]
        row += [f"{_median(by[s], k):.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")]
        row += [f"{rate[s] / rate[b]:.3f}" for b in bases]
        row += [" / ".join(cpu), bound, _redis_commands(usable)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _redis_commands(runs: list[dict[str, Any]]) -> str:
    """The median Redis commands per request, by command (blank without Redis)."""
    found = [r.get("redis_commands_per_request") for r in runs]
    counted = [f for f in found if f is not None]
    if not counted:
        return ""
    names = sorted({name for f in counted for name in f})
    return (
        ", ".join(
            f"{statistics.median(f.get(name, 0.0) for f in counted):.2f} {name}" for name in names
        )
        or "0"
    )


def open_table(runs: list[dict[str, Any]], stacks: list[str]) -> list[str]:
    head = ["stack", "offered/s", "achieved/s", "p50 ms", "p99 ms", "dropped", "flagged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stacks:
        for r in sorted(
            (r for r in runs if r["stack"] == s and r["mode"] == "open"), key=lambda r: r["offered"]
        ):
            k6 = r["k6"]
            lines.append(
                f"| {s} | {r['offered']:,} | {k6['rate']:,.0f} | {k6['p50_ms']:.2f} "
                f"| {k6['p99_ms']:.2f} "
                f"| {k6['dropped']:,} | {'yes' if r['flags'] else ''} |"
            )
    return lines


def main() -> int:
    args = _parser().parse_args()
    if args.replay:
        return replay(args.replay, args.out)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.open_duration = 1, 4, 1, 4
        args.rates = "200" if args.rates == _parser().get_default("rates") else args.rates
    known = with_baseline(STACKS, str(Path(args.baseline).resolve())) if args.baseline else STACKS
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = [s for s in stacks if s not in known]
    if unknown:
        print(f"unknown stack(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    pinning = Pinning(
        service=_cpus(args.service_cpus),
        envoy=_cpus(args.envoy_cpus),
        load=_cpus(args.load_cpus),
        redis=_cpus(args.redis_cpus),
        envoy_concurrency=args.envoy_concurrency,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # Absolute: k6 resolves a relative TOKENS path against the script's directory.
    out = (args.out or OUT_DIR / f"compare-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    closed = RunPlan(
        "closed",
        args.duration,
        args.warmup,
        args.vus,
        max_vus=args.max_vus,
        busy_above=args.busy_above,
    )
    plans: list[tuple[str, RunPlan, str]] = []
    for index in range(args.rounds):
        plans += [
            (s, closed, f"round {index + 1}, closed loop {args.vus} VUs")
            for s in _order(stacks, index)
        ]
    for index, rate in enumerate(rates):
        plan = RunPlan(
            "open",
            args.open_duration,
            min(args.warmup, 2),
            0,
            rate,
            args.max_vus,
            busy_above=args.busy_above,
        )
        plans += [(s, plan, f"open loop {rate:,}/s") for s in _order(stacks, index)]
    progress = Progress([STARTUP_S + p.warmup_s + p.duration_s + 1 for _, p, _ in plans])
    print(
        f"{len(plans)} runs of {', '.join(stacks)}; pinning {pinning.describe()}; logs in {out}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with terminate_on_sigterm():
        for number, (stack, plan, what) in enumerate(plans, 1):
            progress.show(f"{stack}: {what}")
            run = measure(
                known[stack], plan, pinning, out / f"{number:02d}-{stack}", args.server_tree
            )
            runs.append(run)
            k6 = run["k6"]
            note = f"  flagged: {'; '.join(run['flags'])}" if run["flags"] else ""
            print(
                f"    {k6['rate']:,.0f} req/s  p99 {k6['p99_ms']:.1f} ms"
                f"  wrong {k6['wrong']}{note}",
                flush=True,
            )
            progress.step()
    paths = report(runs, stacks, args, pinning.describe(), stamp, out)
    found = versions()
    found["envoy"] = _first_line([find_envoy(), "--version"])
    found["k6"] = _first_line([find_k6(), "version"])
    line = {
        "time": stamp,
        "argv": sys.argv,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pinning": pinning.describe(),
        "versions": found,
        "elapsed_s": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    append_result(args.results, line)
    print("\nPlots: " + ", ".join(str(p) for p in paths))
    print(f"JSON: {args.results} (one line); elapsed {line['elapsed_s'] / 60:.1f} min")
    return 1 if any(r["k6"]["wrong"] for r in runs) else 0


def report(
    runs: list[dict[str, Any]],
    stacks: list[str],
    args: argparse.Namespace,
    pinning: dict[str, Any],
    stamp: str,
    out: Path,
) -> list[Path]:
    """Print the tables and the flagged runs; draw the plots into ``out``."""
    print(
        f"\nClosed loop ({args.vus} VUs, {args.duration:g} s, "
        f"median of {args.rounds} rounds; * = flagged):\n"
    )
    print("\n".join(closed_table(runs, stacks)))
    has_open = any(r["mode"] == "open" for r in runs)
    if has_open:
        print(f"\nOpen loop ({args.open_duration:g} s per rate):\n")
        print("\n".join(open_table(runs, stacks)))
    flagged = [r for r in runs if r["flags"]]
    if flagged:
        print("\nFlagged runs:")
        for r in flagged:
            print(f"  {r['stack']} {r['mode']} {r['offered'] or ''}: {'; '.join(r['flags'])}")
    title = f"{stamp}\nCPUs: " + ", ".join(f"{k} {v}" for k, v in pinning.items())
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plots.throughput(
            runs, stacks, out / "throughput.png", f"closed loop, {args.vus} VUs, {title}"
        ),
        plots.cpu_per_request(
            runs, stacks, out / "cpu-per-request.png", "CPU per request by component"
        ),
    ]
    if has_open:
        paths.append(
            plots.open_loop(runs, stacks, out / "open-loop-p99.png", "p99 against offered rate")
        )
    return paths


def replay(path: Path, out: Path | None) -> int:
    """Tables and plots again from the last JSON line of ``path`` (``--replay``)."""
    line = json.loads(path.read_text().splitlines()[-1])
    args = argparse.Namespace(**line["config"])
    stacks = list(dict.fromkeys(r["stack"] for r in line["runs"]))
    target = out or OUT_DIR / f"compare-{line['time']}"
    paths = report(line["runs"], stacks, args, line["pinning"], line["time"], target)
    print("\nPlots: " + ", ".join(str(p) for p in paths))
    return 0


def _first_line(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0].strip()


if __name__ == "__main__":
    sys.exit(main())
