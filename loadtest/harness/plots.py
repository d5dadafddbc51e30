"""PNG plots of a side-by-side comparison (matplotlib, no display needed)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display is needed
import matplotlib.pyplot as plt

COMPONENTS = ("envoy", "service", "redis", "k6")
COLOURS = {"envoy": "#4c72b0", "service": "#dd8452", "redis": "#c44e52", "k6": "#8c8c8c"}


def _closed(
    runs: Sequence[dict[str, Any]], stacks: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    return {s: [r for r in runs if r["stack"] == s and r["mode"] == "closed"] for s in stacks}


def usable(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The unflagged runs, or all of them when every one is flagged (as the tables do)."""
    clean = [r for r in runs if not r["flags"]]
    return clean or list(runs)


def _finish(fig: Any, ax: Any, path: Path, title: str, *, grid: str, legend: bool) -> Path:
    """Title, grid and legend, then the PNG."""
    ax.set_title(title, fontsize="medium")
    ax.grid(axis=grid, alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(
    runs: Sequence[dict[str, Any]], stacks: Sequence[str], path: Path, title: str
) -> Path:
    """Requests/s per stack: the median as a bar, every round as a dot, flagged rounds hollow."""
    by_stack = _closed(runs, stacks)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for x, stack in enumerate(stacks):
        rates = [r["k6"]["rate"] for r in usable(by_stack[stack])]
        if not rates:
            continue
        ax.bar(x, statistics.median(rates), color="#4c72b0", alpha=0.75)
        for run in by_stack[stack]:
            flagged = bool(run["flags"])
            ax.plot(
                x, run["k6"]["rate"], "o", color="black", mfc="none" if flagged else "black", ms=5
            )
        ax.annotate(
            f"{statistics.median(rates):,.0f}",
            (x, statistics.median(rates)),
            ha="center",
            va="bottom",
        )
    ax.set_xticks(range(len(stacks)), stacks, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("requests/s through Envoy (log scale)")
    return _finish(fig, ax, path, title, grid="y", legend=False)


def open_loop(
    runs: Sequence[dict[str, Any]], stacks: Sequence[str], path: Path, title: str
) -> Path:
    """p99 latency against the offered rate; a run that fell behind (dropped iterations,
    or achieved < 95 % of offered) is drawn hollow."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for stack in stacks:
        points = sorted(
            (r for r in runs if r["stack"] == stack and r["mode"] == "open"),
            key=lambda r: r["offered"],
        )
        if not points:
            continue
        xs = [r["offered"] for r in points]
        ys = [r["k6"]["p99_ms"] for r in points]
        (line,) = ax.plot(xs, ys, "-", label=stack)
        for run in points:
            ax.plot(
                run["offered"],
                run["k6"]["p99_ms"],
                "o",
                color=line.get_color(),
                mfc="none" if run["flags"] else line.get_color(),
            )
    ax.set_xlabel("offered requests/s (k6 constant-arrival-rate)")
    ax.set_ylabel("p99 latency, ms (log scale)")
    ax.set_yscale("log")
    return _finish(fig, ax, path, title, grid="both", legend=True)


def cpu_per_request(
    runs: Sequence[dict[str, Any]], stacks: Sequence[str], path: Path, title: str
) -> Path:
    """CPU µs per request, stacked by component (median over the closed-loop rounds)."""
    by_stack = _closed(runs, stacks)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bottoms = [0.0] * len(stacks)
    for component in COMPONENTS:
        values = []
        for stack in stacks:
            found = [r["cpu_us_per_request"].get(component, 0.0) for r in usable(by_stack[stack])]
            values.append(statistics.median(found) if found else 0.0)
        ax.bar(
            range(len(stacks)), values, bottom=bottoms, color=COLOURS[component], label=component
        )
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for x, total in enumerate(bottoms):
        ax.annotate(f"{total:,.0f}", (x, total), ha="center", va="bottom")
    ax.set_xticks(range(len(stacks)), stacks, rotation=20, ha="right")
    ax.set_ylabel("CPU µs per request")
    return _finish(fig, ax, path, title, grid="y", legend=True)
