"""Gateway configs -> the snapshots the ADS server sends, and which gateway a node serves.

``SnapshotPublisher.publish`` is fed the compiled gateways of each new policy set. It
builds every gateway's snapshot (its own resources plus the clusters that reach this
mixerless), and hands it to the ``SnapshotCache`` the ADS server reads:

- **Clusters leave last.** Envoy applies a state-of-the-world update type by type, so
  a cluster removed together with the routes that used it could vanish while the old
  routes still point at it (503 ``NC``). When a snapshot drops clusters, a *bridge*
  snapshot is published first: the new resources plus the old clusters (and their
  endpoints); the new snapshot follows ``CLUSTER_DRAIN`` seconds later, unless a newer
  publish superseded it.
- **A removed Gateway serves nothing**: its key gets an empty snapshot (through the
  same bridge), so its Envoys drop its listeners rather than keep the last ones.
- **A snapshot that cannot be built** keeps the gateway's previous one; the failure is
  logged and counted as ``mixerless_policy_loads_total{result="xds_error"}``. A config
  that loaded is already compiled and checked, so this only happens on a bug.

Which gateway an Envoy gets is ``gateway_for(node)``: by node id, else by node cluster,
among the ``nodes`` of the gateways last published.
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from services.metrics import Metrics
from services.xds.build import Services
from services.xds.cache import SnapshotCache
from services.xds.gateway_config import GatewayConfig, snapshot
from services.xds.snapshot import CLUSTER, ENDPOINT, Snapshot

log = structlog.get_logger("mixerless.xds")

CLUSTER_DRAIN = 2.0  # seconds between routes leaving a cluster and the cluster's removal

Schedule = Callable[[float, Callable[[], None]], object]
"""Run a callback after a delay (seconds); the event loop's ``call_later`` by default."""


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


class SnapshotPublisher:
    """Owns the ``SnapshotCache``: one snapshot per gateway name, and the node map."""

    def __init__(
        self,
        services: Services,
        metrics: Metrics,
        *,
        cache: SnapshotCache | None = None,
        schedule: Schedule = _call_later,
        drain: float = CLUSTER_DRAIN,
    ) -> None:
        self.services = services
        self.metrics = metrics
        self.cache = cache if cache is not None else SnapshotCache()
        self._schedule = schedule
        self._drain = drain
        self._gateway_for_node: dict[str, str] = {}
        self._pending: dict[str, Snapshot] = {}

    def gateway_for(self, node: Any) -> str | None:
        """The gateway an Envoy ``node`` serves: by node id, else by node cluster."""
        return self._gateway_for_node.get(node.id) or self._gateway_for_node.get(node.cluster)

    def publish(self, gateways: Sequence[GatewayConfig]) -> None:
        """Publish every gateway's snapshot, and an empty one for each gateway now gone.

        Call on the event loop that serves the cache (see ``SnapshotCache``).
        """
        self._gateway_for_node = {
            node: config.gateway.name for config in gateways for node in config.gateway.nodes
        }
        for config in gateways:
            name = config.gateway.name
            try:
                built = snapshot(config, self.services)
            except Exception:  # a loaded config always builds: only a bug lands here
                self.metrics.policy_loads.labels("xds_error").inc()
                log.exception("gateway snapshot not built; keeping the previous", gateway=name)
                continue
            self._set(name, built)
        for removed in set(self.cache.keys()) - {config.gateway.name for config in gateways}:
            self._set(removed, Snapshot.build({}))

    def _set(self, name: str, new: Snapshot) -> None:
        """Publish ``new``, through a bridge that keeps the clusters it drops for a while."""
        self._pending.pop(name, None)
        previous = self.cache.get(name)
        stale = previous.names(CLUSTER) - new.names(CLUSTER) if previous else frozenset()
        if previous is None or not stale:
            self.cache.set(name, new)
            return
        kept = {
            CLUSTER: {n: previous.resources[CLUSTER][n] for n in stale},
            ENDPOINT: {n: m for n, m in previous.resources[ENDPOINT].items() if n in stale},
        }
        bridge = Snapshot.build(
            {
                type_url: {**kept.get(type_url, {}), **new.resources[type_url]}
                for type_url in new.resources
            }
        )
        self.cache.set(name, bridge)
        self._pending[name] = new
        self._schedule(self._drain, lambda: self._finish(name, new))

    def _finish(self, name: str, new: Snapshot) -> None:
        """The drain is over: publish ``new`` unless a later publish superseded it."""
        if self._pending.get(name) is new:
            del self._pending[name]
            self.cache.set(name, new)
