"""Percentiles of one run's latencies, and medians over runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


def latency_ms(sorted_us: Sequence[float]) -> dict[str, float]:
    """``p50_ms``, ``p90_ms``, ``p99_ms`` and ``max_ms`` of sorted latencies in µs."""
    return {
        "p50_ms": percentile(sorted_us, 0.50) / 1000,
        "p90_ms": percentile(sorted_us, 0.90) / 1000,
        "p99_ms": percentile(sorted_us, 0.99) / 1000,
        "max_ms": (sorted_us[-1] / 1000) if sorted_us else float("nan"),
    }


def median_of(
    runs: Sequence[Any],
    numeric: Sequence[str],
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
