"""``envoy.service.discovery.v3.AggregatedDiscoveryService`` over a ``SnapshotCache``.

One stream is one Envoy: its first request names the node, ``key_for_node`` maps the node
to a cache key (a gateway), and the stream serves that key's snapshot. A node without a
key is sent nothing (warned once) until a ``set`` of any key makes ``key_for_node`` find
one. Each stream has a reader task that only queues requests, and one writer loop that
takes requests and wake-ups from the queue in order; the protocol rules themselves (SotW
and delta) are in ``services.xds.streams``.
"""

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from services import envoy_api as api
from services.clock import Clock, SystemClock
from services.metrics import Metrics
from services.xds.cache import SnapshotCache
from services.xds.snapshot import ORDER
from services.xds.streams import (
    CLOSED,
    DeltaStream,
    KeyForNode,
    SotwStream,
    Stream,
    read_requests,
    type_label,
)

log = structlog.get_logger("mixerless.xds")


class AdsServicer(api.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves each Envoy the snapshot of its node's key, SotW or delta, as Envoy chooses.

    Register with ``api.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)``
    (service name ``api.AGGREGATED_DISCOVERY_SERVICE_NAME``).
    """

    def __init__(
        self,
        cache: SnapshotCache,
        key_for_node: KeyForNode,
        metrics: Metrics,
        clock: Clock | None = None,
    ) -> None:
        self.cache = cache
        self.key_for_node = key_for_node
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._streams: dict[int, Stream[Any]] = {}
        self._stream_ids = itertools.count(1)
        for type_url in ORDER:  # zero-valued series, so "no NACKs" shows in /metrics
            for family in (metrics.xds_pushes, metrics.xds_acks, metrics.xds_nacks):
                family.labels(type_label(type_url))

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        stream = SotwStream(self, next(self._stream_ids), context.peer())
        async for response in self._serve(stream, requests):
            yield response

    async def DeltaAggregatedResources(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        stream = DeltaStream(self, next(self._stream_ids), context.peer())
        async for response in self._serve(stream, requests):
            yield response

    async def _serve(self, stream: Stream[Any], requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        self._streams[stream.id] = stream
        self.metrics.xds_stream_opens.labels(stream.variant).inc()
        connected = self.metrics.xds_streams.labels(stream.variant)
        connected.inc()
        # Every set() wakes the stream: the node may map to another key since the last one.
        unwatch = self.cache.watch(None, stream.wake)
        reader = asyncio.create_task(
            read_requests(requests, stream.queue), name=f"xds-read-{stream.id}"
        )
        try:
            while (item := await stream.queue.get()) is not CLOSED:
                for response in stream.step(item):
                    yield response
        finally:
            reader.cancel()
            unwatch()
            connected.dec()
            del self._streams[stream.id]
            log.info("xds stream closed", stream=stream.id, key=stream.key)

    def close_streams(self) -> None:
        """End every open stream with status OK (Envoy reconnects, to another replica).

        ADS streams never end on their own, so a server stop would spend its whole grace
        period waiting for them; call this just before ``GrpcServer.stop``.
        """
        for stream in self._streams.values():
            stream.queue.put_nowait(CLOSED)

    def debug_state(self) -> dict[str, Any]:
        """Connected streams: node, key, and per type the versions sent/ACKed, last NACK."""
        return {"streams": [stream.describe() for stream in self._streams.values()]}
