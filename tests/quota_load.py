"""Many concurrent ShouldRateLimit calls spread over several ports, and what they got.

For the tests of ``mixerless serve --workers N``: one quota hammered through the
public port (the kernel spreads connections over the workers) and through each
worker's own port at once, every channel on a connection of its own.
"""

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from services import envoy_api as api
from tests.envoy_proc import http_request

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # never share one with another channel


@dataclass
class Tally:
    """The answers of a hammering, by port."""

    admitted: Counter[int] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)

    @property
    def total_admitted(self) -> int:
        return sum(self.admitted.values())

    @property
    def total_refused(self) -> int:
        return sum(self.refused.values())


def channel(port: int) -> grpc.aio.Channel:
    """A channel to ``127.0.0.1:port`` on a connection of its own."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)


async def hammer(
    ports: Sequence[int],
    request: Any,
    total: int,
    *,
    channels_per_port: int = 2,
    in_flight: int = 4,
) -> Tally:
    """Send ``request`` ``total`` times, from ``channels_per_port`` connections to each
    port with ``in_flight`` calls outstanding on each, all at once; tally the answers."""
    tally = Tally()
    sent = itertools.count()
    channels = [(port, channel(port)) for port in ports for _ in range(channels_per_port)]

    async def caller(port: int, stub: Any) -> None:
        while next(sent) < total:
            try:
                reply = await stub.ShouldRateLimit(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                tally.failed.append(f"port {port}: {exc.code().name} {exc.details()}")
                continue
            if reply.overall_code == api.RateLimitResponse.OK:
                tally.admitted[port] += 1
            else:
                tally.refused[port] += 1

    try:
        await asyncio.gather(
            *(
                caller(port, api.RateLimitServiceStub(ch))
                for port, ch in channels
                for _ in range(in_flight)
            )
        )
    finally:
        await asyncio.gather(*(ch.close() for _, ch in channels))
    return tally


def metric(port: int, family: str, **labels: str) -> float:
    """The sum of ``family``'s samples (a counter: its ``_total``) with ``labels``, from
    ``/metrics`` on ``127.0.0.1:port``."""
    text = http_request(port, "/metrics").text()
    return sum(
        sample.value
        for parsed in text_string_to_metric_families(text)
        if parsed.name == family
        for sample in parsed.samples
        if sample.name in (family, f"{family}_total")
        and all(sample.labels.get(k) == v for k, v in labels.items())
    )
