"""SnapshotPublisher: bridge snapshots drain removed clusters; gone gateways serve nothing."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.metrics import Metrics
from services.policy.errors import ErrorSink
from services.policy.yamltext import parse_documents
from services.xds.build import AUTHZ_CLUSTER, RATELIMIT_CLUSTER, ListenerSettings, Services
from services.xds.cache import SnapshotCache
from services.xds.gateway import Endpoint, compile_gateway
from services.xds.gateway_config import GatewayConfig, compile_gateway_config
from services.xds.publisher import CLUSTER_DRAIN, SnapshotPublisher
from services.xds.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

SERVICES = Services(Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 8081))
MIXERLESS = {AUTHZ_CLUSTER, RATELIMIT_CLUSTER}


def gateway(name: str, routes: Sequence[str], nodes: Sequence[str] = ()) -> GatewayConfig:
    """A compiled Gateway ``name`` with one prefix route (and cluster) per route name."""
    text = (
        "apiVersion: mixerless.io/v1alpha1\nkind: Gateway\n"
        f"metadata: {{name: {name}, namespace: istio-system}}\n"
        "spec:\n"
        + (f"  nodes: [{', '.join(nodes)}]\n" if nodes else "")
        + "  listeners: [{name: http, port: 10000}]\n  routes:\n"
        + "".join(
            f"  - {{name: {route}, match: {{prefix: /{route}}}, "
            f'backend: {{endpoints: ["127.0.0.1:9000"]}}}}\n'
            for route in routes
        )
    )
    [document] = parse_documents(text)
    sink = ErrorSink(f"{name}.yaml")
    compiled = compile_gateway(document.body, document.line, sink)
    assert compiled is not None, sink.errors
    return compile_gateway_config(compiled, (), ListenerSettings())


class ManualScheduler:
    """Records ``call_later`` requests; the test decides when the delay has passed."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.calls.append((delay, callback))

    def elapse(self) -> None:
        calls, self.calls = self.calls, []
        for _delay, callback in calls:
            callback()


@dataclass(frozen=True)
class Node:
    """The two fields of an Envoy ``Node`` the publisher reads."""

    id: str
    cluster: str = ""


def clusters(snapshot: Snapshot | None) -> set[str]:
    assert snapshot is not None
    return set(snapshot.names(CLUSTER))


def routed(snapshot: Snapshot | None) -> set[str]:
    """The clusters the snapshot's routes send traffic to."""
    assert snapshot is not None
    return {
        route.route.cluster
        for config in snapshot.resources[ROUTE].values()
        for host in config.virtual_hosts
        for route in host.routes
    }


def make(
    scheduler: ManualScheduler | None = None,
    metrics: Metrics | None = None,
    cache: SnapshotCache | None = None,
) -> SnapshotPublisher:
    return SnapshotPublisher(
        SERVICES,
        metrics if metrics is not None else Metrics(),
        cache=cache,
        schedule=scheduler if scheduler is not None else ManualScheduler(),
    )


class TestPublish:
    def test_snapshot_holds_routes_and_mixerless_clusters(self) -> None:
        """A gateway's snapshot has its route clusters plus the authz and ratelimit ones."""
        publisher = make()
        publisher.publish([gateway("public", ["a"])])
        assert clusters(publisher.cache.get("public")) == {"public/a"} | MIXERLESS

    def test_removed_cluster_drains_through_a_bridge(self) -> None:
        """Dropping a route keeps its cluster for CLUSTER_DRAIN, then removes it."""
        scheduler = ManualScheduler()
        publisher = make(scheduler)
        publisher.publish([gateway("public", ["a", "b"])])
        publisher.publish([gateway("public", ["a"])])
        bridge = publisher.cache.get("public")
        assert routed(bridge) == {"public/a"}
        assert clusters(bridge) == {"public/a", "public/b"} | MIXERLESS
        assert [delay for delay, _ in scheduler.calls] == [CLUSTER_DRAIN]
        scheduler.elapse()
        assert clusters(publisher.cache.get("public")) == {"public/a"} | MIXERLESS

    def test_superseded_pending_snapshot_is_not_applied(self) -> None:
        """A publish during the drain wins: the earlier pending snapshot never lands."""
        scheduler = ManualScheduler()
        publisher = make(scheduler)
        publisher.publish([gateway("public", ["a", "b"])])
        publisher.publish([gateway("public", ["a"])])  # bridge; "a only" pending
        publisher.publish([gateway("public", ["a", "b"])])  # "b" is back before the drain ends
        scheduler.elapse()
        assert routed(publisher.cache.get("public")) == {"public/a", "public/b"}

    def test_removed_gateway_gets_an_empty_snapshot(self) -> None:
        """A Gateway no longer published loses its listeners, then (after the drain) all."""
        scheduler = ManualScheduler()
        publisher = make(scheduler)
        publisher.publish([gateway("public", ["a"]), gateway("private", ["b"])])
        publisher.publish([gateway("public", ["a"])])
        gone = publisher.cache.get("private")
        assert gone is not None and not gone.names(LISTENER) and not gone.names(ROUTE)
        scheduler.elapse()
        assert clusters(publisher.cache.get("private")) == set()
        assert clusters(publisher.cache.get("public")) == {"public/a"} | MIXERLESS

    def test_failed_build_keeps_the_previous_snapshot(self) -> None:
        """A snapshot that cannot be built is counted as xds_error; the old one stays."""
        cache, metrics = SnapshotCache(), Metrics()
        make(metrics=metrics, cache=cache).publish([gateway("public", ["a"])])
        before = cache.get("public")
        broken = Services(Endpoint("127.0.0.1", -1), SERVICES.ratelimit)  # not a port
        SnapshotPublisher(broken, metrics, cache=cache, schedule=ManualScheduler()).publish(
            [gateway("public", ["b"])]
        )
        assert cache.get("public") is before
        labels = {"result": "xds_error"}
        assert metrics.registry.get_sample_value("mixerless_policy_loads_total", labels) == 1


class TestGatewayFor:
    def test_node_id_beats_node_cluster(self) -> None:
        """A node's id picks its gateway before its cluster does; unknown nodes get None."""
        publisher = make()
        publisher.publish(
            [gateway("public", ["a"], nodes=["edge-1"]), gateway("private", ["b"], ["edge"])]
        )
        assert publisher.gateway_for(Node("edge-1", cluster="edge")) == "public"
        assert publisher.gateway_for(Node("edge-2", cluster="edge")) == "private"
        assert publisher.gateway_for(Node("other", cluster="other")) is None

    def test_node_map_follows_the_latest_publish(self) -> None:
        """Nodes of a gateway that is gone no longer map to it."""
        publisher = make()
        publisher.publish([gateway("public", ["a"], nodes=["edge-1"])])
        publisher.publish([gateway("private", ["b"], nodes=["edge-2"])])
        assert publisher.gateway_for(Node("edge-1")) is None
