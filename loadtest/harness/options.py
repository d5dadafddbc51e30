"""The command-line options every load driver shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import RESULTS


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every load driver here shares: run length and shape, idle waiting,
    where results go."""
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
    parser.add_argument(
        "--server-cpus",
        type=parse_cpus,
        default=None,
        help="pin the server started here to these CPUs (e.g. 1); run the driver itself "
        "under `taskset -c 0` to keep the load generator off them",
    )
    parser.add_argument("--label", default="", help="name of this configuration in the results")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp directory")


def parse_cpus(text: str) -> frozenset[int]:
    """``1`` or ``0,1`` as a CPU set."""
    try:
        cpus = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of CPU numbers: {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"not a list of CPU numbers: {text!r}")
    return cpus


def cpu_set(cpus: tuple[int, ...] | None) -> frozenset[int] | None:
    """A run config's CPU list as the process starters take it."""
    return frozenset(cpus) if cpus else None
