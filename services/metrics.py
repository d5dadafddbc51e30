"""Every Prometheus metric mixerless exports, defined in one place.

A ``Metrics`` owns its own registry (no import-time globals), so tests and
``mixerless check`` never touch process-wide state. Names follow
``mixerless_<service>_<noun>_<unit>``; labels are bounded by config (rule names,
not request values), except where a rule opts into ``detailed_metric``.
"""

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


class Metrics:
    """The metric families, created on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_requests = Counter(
            "mixerless_rpc_requests_total",
            "gRPC calls handled, by service and result.",
            ["service", "result"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "mixerless_rpc_duration_seconds",
            "Time spent answering a gRPC call, by service and result.",
            ["service", "result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
        """Per-call metrics of one gRPC service, with labelled children resolved once
        (``labels()`` costs ~10 µs: too much per call)."""
        return RpcRecorder(
            {
                outcome: (
                    self.rpc_requests.labels(service, outcome).inc,
                    self.rpc_latency.labels(service, outcome).observe,
                )
                for outcome in outcomes
            }
        )

    def set_policy(self, digest: str, loaded_at: float) -> None:
        self.policy_info.clear()
        self.policy_info.labels(digest).set(1)
        self.policy_loaded_at.set(loaded_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RpcRecorder:
    """Counts one call and observes its duration, by outcome."""

    def __init__(self, children: dict[str, tuple[Callable[[], None], Callable[[float], None]]]):
        self._children = children

    def record(self, outcome: str, started: float) -> None:
        """One call with ``outcome`` that began at ``time.perf_counter()`` ``started``."""
        count, observe = self._children[outcome]
        count()
        observe(time.perf_counter() - started)
