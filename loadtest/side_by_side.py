"""Measure two checkouts of mixerless side by side, in one run, with the same drivers.

A code change is judged against the code before it on the same machine, in the same
minutes: each round runs every configuration once against each checkout, in ABBA
order (before, after, after, before, ...) so that drift in the machine's load falls
on both alike. The drivers (``check_load.py``, ``rls_load.py``) come from this
directory for both checkouts; each server runs from its checkout (``PYTHONPATH``).

    .venv/bin/python loadtest/side_by_side.py --before ../base --after . --rounds 3

prints one markdown table: per configuration and checkout, the median over the rounds
of decisions/s, p99 and server CPU per decision, and after/before ratios. Raw runs go to
``loadtest/out/side_by_side.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "side_by_side.jsonl"

# name -> (driver, arguments): the configurations the foundation issue is judged on.
CONFIGURATIONS: dict[str, tuple[str, list[str]]] = {
    "check: none": ("check_load.py", ["--scenario", "none"]),
    "check: policies20-cached-jwt": ("check_load.py", ["--scenario", "policies20-cached-jwt"]),
    "check: policies20-fresh-rs256": ("check_load.py", ["--scenario", "policies20-fresh-rs256"]),
    "rls: memory": ("rls_load.py", ["--store", "memory"]),
    "rls: redis": ("rls_load.py", ["--store", "redis"]),
}


def run_once(
    tree: Path, name: str, label: str, duration: float, warmup: float, extra: list[str]
) -> dict[str, Any]:
    """One measured run of ``name`` against the server code in ``tree``."""
    driver, arguments = CONFIGURATIONS[name]
    results = HERE / "out" / f"side_by_side.{os.getpid()}.tmp.jsonl"
    results.unlink(missing_ok=True)
    argv = [
        sys.executable,
        str(HERE / driver),
        *arguments,
        "--runs",
        "1",
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--label",
        label,
        "--results",
        str(results),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tree)
    [line] = results.read_text().splitlines()
    results.unlink()
    found: dict[str, Any] = json.loads(line)
    return found


def cpu_per_decision(median: dict[str, Any]) -> float:
    """Server CPU µs per answer (check_load calls it per check, rls_load per decision)."""
    value = median.get("server_us_per_decision", median.get("server_us_per_check"))
    return float(value) if value is not None else float("nan")


def table(names: list[str], medians: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """The markdown table of the medians over the rounds, before beside after."""
    lines = [
        "| configuration | before: decisions/s (rounds) | after: decisions/s (rounds) "
        "| after/before | before: p99 ms | after: p99 ms | before: µs CPU/decision "
        "| after: µs CPU/decision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        before, after = medians[(name, "before")], medians[(name, "after")]
        b, a = _middle(before, "rps"), _middle(after, "rps")
        cpu_b = statistics.median(cpu_per_decision(r) for r in before)
        cpu_a = statistics.median(cpu_per_decision(r) for r in after)
        lines.append(
            f"| {name} | **{b:,.0f}** ({_each(before)}) | **{a:,.0f}** ({_each(after)}) "
            f"| {a / b:.2f} | {_middle(before, 'p99_ms'):.2f} | {_middle(after, 'p99_ms'):.2f} "
            f"| {cpu_b:.0f} | {cpu_a:.0f} |"
        )
    return "\n".join(lines)


def _middle(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def _each(runs: list[dict[str, Any]]) -> str:
    return " / ".join(f"{r['rps']:,.0f}" for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout measured first")
    parser.add_argument("--after", type=Path, required=True, help="checkout compared with it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--only", action="append", choices=list(CONFIGURATIONS))
    parser.add_argument("extra", nargs="*", help="more driver arguments, after --")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    names = args.only or list(CONFIGURATIONS)
    OUT.parent.mkdir(exist_ok=True)
    medians: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_number in range(args.rounds):
        for index, name in enumerate(names):
            order = ["before", "after"] if (round_number + index) % 2 == 0 else ["after", "before"]
            for which in order:
                label = f"{which}: {name}"
                line = run_once(trees[which], name, label, args.duration, args.warmup, args.extra)
                median = line["median"]
                medians.setdefault((name, which), []).append(median)
                with OUT.open("a") as out:
                    out.write(json.dumps({"round": round_number, **line}, default=str) + "\n")
                print(
                    f"round {round_number + 1} {label}: {median['rps']:,.0f}/s "
                    f"p99 {median['p99_ms']:.2f} ms "
                    f"{cpu_per_decision(median):.0f} µs/decision",
                    file=sys.stderr,
                )
    print(table(names, medians))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
