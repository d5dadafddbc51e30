"""Every Prometheus metric mixerless exports, defined in one place.

A ``Metrics`` owns its own registry (no import-time globals), so tests and
``mixerless check`` never touch process-wide state. Names follow
``mixerless_<service>_<noun>_<unit>``; labels are bounded by config (rule names,
not request values), except where a rule opts into ``detailed_metric``.
"""

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# The buckets' "le" labels, as prometheus_client writes them ("0.0001", "1.0", "+Inf").
_go_float: Callable[[float], str] = floatToGoString  # typed here: the library's is not
_BUCKET_LABELS = (*(_go_float(bound) for bound in LATENCY_BUCKETS), "+Inf")


class Metrics:
    """The metric families, created on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc = RpcMetrics()
        r.register(self.rpc)
        self.evictions = EvictionMetrics()
        r.register(self.evictions)
        self.policy_loads = Counter(
            "mixerless_policy_loads_total",
            "Policy directory loads, by result (success or error).",
            ["result"],
            registry=r,
        )
        self.policy_info = Gauge(
            "mixerless_policy_info",
            "The serving policy set: 1 for its content hash.",
            ["digest"],
            registry=r,
        )
        self.policy_loaded_at = Gauge(
            "mixerless_policy_last_load_timestamp_seconds",
            "When the serving policy set was loaded.",
            registry=r,
        )
        self.backend_errors = Counter(
            "mixerless_backend_errors_total",
            "Failed calls to a backend (redis, jwks, provider), by backend.",
            ["backend"],
            registry=r,
        )
        self.ratelimit_hits = Counter(
            "mixerless_ratelimit_hits_total",
            "Hits on a rate limit rule, by domain, rule and outcome "
            "(within_limit, near_limit, over_limit, over_limit_with_local_cache, shadow_mode).",
            ["domain", "rule", "outcome"],
            registry=r,
        )
        self.ratelimit_unknown_domain = Counter(
            "mixerless_ratelimit_unknown_domain_total",
            "Requests for a domain no loaded config defines (answered OK, unlimited).",
            registry=r,
        )
        self.ratelimit_global_shadow = Counter(
            "mixerless_ratelimit_global_shadow_mode_total",
            "Requests answered OK only because global shadow mode is on.",
            registry=r,
        )
        self.xds_streams = Gauge(
            "mixerless_xds_streams",
            "Connected ADS streams, by variant (sotw or delta).",
            ["variant"],
            registry=r,
        )
        self.xds_stream_opens = Counter(
            "mixerless_xds_stream_opens_total",
            "ADS streams opened, by variant (a growing count means Envoys reconnecting).",
            ["variant"],
            registry=r,
        )
        self.xds_pushes = Counter(
            "mixerless_xds_pushes_total",
            "Discovery responses sent to Envoys, by resource type.",
            ["type"],
            registry=r,
        )
        self.xds_acks = Counter(
            "mixerless_xds_acks_total",
            "Discovery responses an Envoy accepted (ACK), by resource type.",
            ["type"],
            registry=r,
        )
        self.xds_nacks = Counter(
            "mixerless_xds_nacks_total",
            "Discovery responses an Envoy rejected (NACK: a rejected update), by resource type.",
            ["type"],
            registry=r,
        )

    def rpc_recorder(self, service: str, outcomes: Iterable[str]) -> "RpcRecorder":
        """Per-call metrics of one gRPC service (every outcome's series exists from now)."""
        return self.rpc.recorder(service, outcomes)

    def set_policy(self, digest: str, loaded_at: float) -> None:
        self.policy_info.clear()
        self.policy_info.labels(digest).set(1)
        self.policy_loaded_at.set(loaded_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RpcRecorder:
    """Counts the calls of one gRPC service and their durations, by outcome, without a lock.

    Every call pays for this, so it is plain arithmetic: each thread counts into rows of
    its own (a bucket count per ``LATENCY_BUCKETS`` bound plus +Inf, then the sum of
    durations), found through a ``threading.local``, and a scrape adds the rows of every
    thread up (``RpcMetrics``). prometheus_client's Counter and Histogram take three
    locks a call and walk the buckets in Python, which cost several microseconds a call.
    A scrape may see one thread's call counted in a bucket and not yet in the sum.
    """

    def __init__(self, service: str, outcomes: Iterable[str]) -> None:
        self.service = service
        self.outcomes = tuple(outcomes)
        self._local = threading.local()
        self._lock = threading.Lock()  # guards ``_rows``: a thread's first call adds its own
        self._rows: list[dict[str, list[float]]] = []

    def record(self, outcome: str, started: float) -> None:
        """One call with ``outcome`` that began at ``time.perf_counter()`` ``started``."""
        self.observe(outcome, time.perf_counter() - started)

    def observe(self, outcome: str, seconds: float) -> None:
        """One call with ``outcome`` that took ``seconds``."""
        try:
            rows: dict[str, list[float]] = self._local.rows
        except AttributeError:
            rows = self._thread_rows()
        row = rows[outcome]
        row[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds ("le")
        row[-1] += seconds

    def _thread_rows(self) -> dict[str, list[float]]:
        width = len(LATENCY_BUCKETS) + 2  # each bound, +Inf, the sum
        rows = {outcome: [0.0] * width for outcome in self.outcomes}
        with self._lock:
            self._rows.append(rows)
        self._local.rows = rows
        return rows

    def totals(self) -> dict[str, list[float]]:
        """Per outcome: the calls in each bucket (not cumulative), then the sum."""
        with self._lock:
            every = list(self._rows)
        width = len(LATENCY_BUCKETS) + 2
        summed = {outcome: [0.0] * width for outcome in self.outcomes}
        for rows in every:
            for outcome, row in rows.items():
                total = summed[outcome]
                for index, value in enumerate(row):
                    total[index] += value
        return summed


class EvictionMetrics(Collector):
    """``mixerless_counters_evicted_total``: live in-memory counters dropped to stay within
    ``--memory-max-counters``, read from the stores that hold them (``watch``)."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], int]] = []

    def watch(self, evicted: Callable[[], int]) -> None:
        """Report ``evicted()`` (a running total) in this counter."""
        self._sources.append(evicted)

    def describe(self) -> Iterator[Metric]:
        yield self._family(0)

    def collect(self) -> Iterator[Metric]:
        yield self._family(sum(source() for source in self._sources))

    @staticmethod
    def _family(value: int) -> Metric:
        return CounterMetricFamily(
            "mixerless_counters_evicted",
            "In-memory counters evicted before their window ended, to stay within "
            "--memory-max-counters (each forgets its count).",
            value=value,
        )


class RpcMetrics(Collector):
    """``mixerless_rpc_requests_total`` and ``mixerless_rpc_duration_seconds`` (by service
    and result), collected from the services' ``RpcRecorder``s at scrape time."""

    def __init__(self) -> None:
        self._recorders: list[RpcRecorder] = []

    def recorder(self, service: str, outcomes: Iterable[str]) -> RpcRecorder:
        recorder = RpcRecorder(service, outcomes)
        self._recorders.append(recorder)
        return recorder

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._recorders)

    @staticmethod
    def _families(recorders: Iterable[RpcRecorder] = ()) -> Iterator[Metric]:
        labels = ["service", "result"]
        calls = CounterMetricFamily(
            "mixerless_rpc_requests", "gRPC calls handled, by service and result.", labels=labels
        )
        durations = HistogramMetricFamily(
            "mixerless_rpc_duration_seconds",
            "Time spent answering a gRPC call, by service and result.",
            labels=labels,
        )
        for recorder in recorders:
            for outcome, row in recorder.totals().items():
                cumulative, buckets = 0.0, []
                for bound, count in zip(_BUCKET_LABELS, row[:-1], strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                calls.add_metric([recorder.service, outcome], cumulative)
                durations.add_metric([recorder.service, outcome], buckets, row[-1])
        yield calls
        yield durations
