"""Undecodable gRPC bodies and the log: INVALID_ARGUMENT every time, counted every time,
one log line per interval however many arrive (no client can flood the log)."""

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from services.authz.service import AuthzService, WorkloadDefaults
from services.authz.servicer import AuthorizationServicer
from services.clock import ManualClock
from services.inline import Inline
from services.log_throttle import LogThrottle
from services.metrics import Metrics
from services.ratelimit.memory_store import InMemoryCounterStore
from services.ratelimit.service import RateLimitOptions, RateLimitService
from services.ratelimit.servicer import RateLimitServicer
from tests.hostile_bodies import check_bodies, rate_limit_bodies


@pytest.fixture(name="loop")
def fixture_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Aborted(Exception):
    pass


class Context:
    """The two things the servicers ask of grpc's context here."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def time_remaining(self) -> None:
        return None


def invalid_calls(metrics: Metrics, service: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "mixerless_rpc_requests_total" and sample.labels == {
                "service": service,
                "result": "invalid",
            }:
                return sample.value
    raise AssertionError("no invalid series")


def send(handler: Any, bodies: dict[str, bytes], rounds: int) -> list[grpc.StatusCode | None]:
    codes = []
    for _ in range(rounds):
        for body in bodies.values():
            context = Context()
            with pytest.raises(Aborted):
                handler(body, context)
            codes.append(context.code)
    return codes


def test_undecodable_checks_are_counted_and_logged_once_per_interval(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """100 rounds of four undecodable Checks: 400 INVALID_ARGUMENT, 400 counted, one warning
    line; after the interval the next one is logged with how many were left out."""
    clock, metrics = ManualClock(), Metrics()
    service = AuthzService(lambda: None, None, None, metrics, WorkloadDefaults())  # type: ignore[arg-type]
    servicer = AuthorizationServicer(
        service, metrics, Inline(loop), throttle=LogThrottle(10.0, clock)
    )
    with structlog.testing.capture_logs() as logs:
        codes = send(servicer.check, check_bodies(), 100)
        clock.advance(10.0)
        send(servicer.check, {"again": b"\xff"}, 1)
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT} and len(codes) == 400
    assert invalid_calls(metrics, "authz") == 401
    assert [(line["log_level"], line["left_out"]) for line in logs] == [
        ("warning", 0),
        ("warning", 399),
    ]
    assert logs[0]["peer"] == "ipv4:127.0.0.1:40000"


def test_undecodable_rate_limit_calls_are_counted_and_logged_once_per_interval(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The same for ShouldRateLimit: every call INVALID_ARGUMENT and counted, one line."""
    clock, metrics = ManualClock(), Metrics()
    service = RateLimitService(
        lambda: None, InMemoryCounterStore(clock), clock, metrics, RateLimitOptions()
    )
    servicer = RateLimitServicer(service, metrics, Inline(loop), throttle=LogThrottle(10.0, clock))
    with structlog.testing.capture_logs() as logs:
        codes = send(servicer.should_rate_limit, rate_limit_bodies(), 100)
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT} and len(codes) == 300
    assert invalid_calls(metrics, "ratelimit") == 300
    assert len(logs) == 1 and logs[0]["log_level"] == "warning"
