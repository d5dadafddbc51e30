"""Per-call gRPC metrics: counted per thread without a lock, summed exactly at scrape time."""

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.metrics import LATENCY_BUCKETS, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


ALLOW = (("result", "allow"), ("service", "authz"))
DENY = (("result", "deny"), ("service", "authz"))


def test_every_outcome_is_exported_before_its_first_call() -> None:
    """A recorder's series exist at 0 from the start, as labelled children did."""
    metrics = Metrics()
    metrics.rpc_recorder("authz", ["allow", "deny"])
    found = samples(metrics)
    assert found[("mixerless_rpc_requests_total", DENY)] == 0
    assert found[("mixerless_rpc_duration_seconds_count", DENY)] == 0
    assert found[("mixerless_rpc_duration_seconds_bucket", (("le", "+Inf"), *DENY))] == 0


def test_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """A duration equal to a bound falls in that bound's bucket ("le"), as Prometheus says."""
    metrics = Metrics()
    rpc = metrics.rpc_recorder("authz", ["allow"])
    for seconds in (0.0001, 0.0003, 0.002, 5.0):
        rpc.observe("allow", seconds)
    found = samples(metrics)

    def bucket(le: str) -> float:
        return found[("mixerless_rpc_duration_seconds_bucket", (("le", le), *ALLOW))]

    assert [bucket("0.0001"), bucket("0.0005"), bucket("0.0025"), bucket("1.0")] == [1, 2, 3, 3]
    assert bucket("+Inf") == 4 == found[("mixerless_rpc_requests_total", ALLOW)]
    assert found[("mixerless_rpc_duration_seconds_sum", ALLOW)] == pytest.approx(5.0024)
    assert len([k for k in found if k[0].endswith("_bucket")]) == len(LATENCY_BUCKETS) + 1


def test_calls_from_many_threads_add_up_exactly() -> None:
    """No call is lost when handler threads record at once (each counts into its own rows)."""
    metrics = Metrics()
    rpc = metrics.rpc_recorder("authz", ["allow", "deny"])
    start = threading.Barrier(8)

    def calls() -> None:
        start.wait()
        for index in range(5_000):
            rpc.observe("deny" if index % 5 == 0 else "allow", 0.0002)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = samples(metrics)
    assert found[("mixerless_rpc_requests_total", ALLOW)] == 8 * 4_000
    assert found[("mixerless_rpc_requests_total", DENY)] == 8 * 1_000
    assert found[("mixerless_rpc_duration_seconds_bucket", (("le", "0.00025"), *ALLOW))] == 32_000
