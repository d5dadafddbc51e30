"""A real Envoy configured only over ADS by the server running in this test process.

Envoy's bootstrap has a static ``xds`` cluster (HTTP/2, connection keepalive every 1 s)
pointing at a ``GrpcServer`` with the ``AdsServicer``, and CDS/LDS over ADS, SotW or
delta. The snapshot is built here by hand: one listener (HCM, RDS over ADS, router), a
route configuration sending a path prefix to an EDS cluster, the cluster and its
ClusterLoadAssignment pointing at the echo upstream.

The tests are async so the ADS server shares the test's event loop; every blocking call
(Envoy start and stop, HTTP requests, admin reads, polling) runs in a worker thread.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import yaml
from google.protobuf import json_format

from services import envoy_api as api
from services.grpc_server import GrpcServer, ServerOptions
from services.metrics import Metrics
from services.xds.cache import SnapshotCache
from services.xds.server import AdsServicer
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, Snapshot
from tests.e2e.conftest import Launcher
from tests.envoy_proc import (
    EnvoyProcess,
    Upstream,
    admin_config,
    free_port,
    http_request,
    socket_address,
    static_cluster,
    wait_until,
)

pytestmark = pytest.mark.envoy

NODE_ID = "envoy-ads-e2e"
GATEWAY = "edge"
LISTENER_NAME = "ingress"
ROUTE_NAME = "r"
BACKEND = "backend"
T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
ROUTER_NAME = "envoy.filters.http.router"
ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}
PUSH_DEADLINE = 1.0  # a policy change must reach Envoy within this many seconds
KEEPALIVE_WATCH = 6.0  # with grpc's default ping policy Envoy's stream resets after ~4.4 s
# Envoy's four xDS subscriptions here, and the counters each keeps.
SUBSCRIPTIONS = (
    "cluster_manager.cds",
    f"cluster.{BACKEND}",
    "listener_manager.lds",
    f"http.{LISTENER_NAME}.rds.{ROUTE_NAME}",
)
OUTCOMES = ("update_attempt", "update_success", "update_failure", "update_rejected")
LDS_REJECTED = "listener_manager.lds.update_rejected"

Result = TypeVar("Result")


async def blocking(function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Run a blocking helper in a worker thread, so the ADS server keeps serving."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait (in a thread) until ``condition`` holds; fail after ``within`` seconds."""
    assert await blocking(wait_until, condition, timeout=within), "condition never held"


def build_snapshot(upstream_port: int, listen_port: int, prefix: str, stat_prefix: str) -> Snapshot:
    """The hand-built gateway: ``prefix`` routes to the upstream; other paths get 404."""
    listener = {
        "name": LISTENER_NAME,
        "address": socket_address(listen_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": stat_prefix,
                            "rds": {"route_config_name": ROUTE_NAME, "config_source": ADS_SOURCE},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    route = {
        "name": ROUTE_NAME,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": prefix}, "route": {"cluster": BACKEND}}],
            }
        ],
    }
    cluster = {
        "name": BACKEND,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": ADS_SOURCE},
    }
    assignment = {
        "cluster_name": BACKEND,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(upstream_port)}}]}],
    }
    return Snapshot.build(
        {
            CLUSTER: {BACKEND: json_format.ParseDict(cluster, api.Cluster())},
            ENDPOINT: {BACKEND: json_format.ParseDict(assignment, api.ClusterLoadAssignment())},
            LISTENER: {LISTENER_NAME: json_format.ParseDict(listener, api.Listener())},
            ROUTE: {ROUTE_NAME: json_format.ParseDict(route, api.RouteConfiguration())},
        }
    )


def bootstrap(admin_port: int, ads_port: int, api_type: str) -> str:
    """Envoy's bootstrap: everything over ADS from the ``xds`` cluster at ``ads_port``."""
    xds = static_cluster("xds", ads_port, http2=True)
    options = xds["typed_extension_protocol_options"]
    http2 = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    http2["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"] = {
        "interval": "1s",
        "timeout": "5s",
    }
    config = {
        "node": {"id": NODE_ID, "cluster": GATEWAY},
        "admin": admin_config(admin_port),
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ADS_SOURCE,
            "lds_config": ADS_SOURCE,
        },
        "static_resources": {"clusters": [xds]},
    }
    return yaml.safe_dump(config)


class AdsProcessSide:
    """The control plane in this process: cache, servicer, metrics, and its gRPC server."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.metrics = Metrics()
        self.servicer = AdsServicer(
            cache, lambda node: node.cluster if node.id == NODE_ID else None, self.metrics
        )
        self.server: GrpcServer | None = None

    async def start(self, port: int = 0) -> int:
        servicer = self.servicer
        self.server = GrpcServer(
            "xds",
            port,
            ServerOptions(host="127.0.0.1"),
            lambda server: api.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server),
            [api.AGGREGATED_DISCOVERY_SERVICE_NAME],
        )
        return await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            self.servicer.close_streams()
            await self.server.stop(1.0)
            self.server = None

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def pushes(self, type_url: str | None = None) -> float:
        types = ORDER if type_url is None else (type_url,)
        return sum(
            self.count("mixerless_xds_pushes_total", type=t.rsplit(".", 1)[-1]) for t in types
        )

    def opens(self) -> float:
        return sum(
            self.count("mixerless_xds_stream_opens_total", variant=v) for v in ("sotw", "delta")
        )

    def requested_types(self) -> set[str]:
        """The types the one connected stream has asked for."""
        streams = self.servicer.debug_state()["streams"]
        return set(streams[0]["types"]) if streams else set()

    def acked_everything(self) -> bool:
        """One stream, with every type ACKed at the version last sent."""
        streams = self.servicer.debug_state()["streams"]
        if len(streams) != 1 or set(streams[0]["types"]) != set(ORDER):
            return False
        return all(t["version_acked"] == t["version_sent"] for t in streams[0]["types"].values())


@dataclass
class Gateway:
    """A running Envoy fed by the ADS server, and what the test needs to drive them."""

    envoy: EnvoyProcess
    ads: AdsProcessSide
    ads_port: int
    listen_port: int
    upstream: Upstream
    delta: bool

    def snapshot(self, prefix: str = "/v1", stat_prefix: str = LISTENER_NAME) -> Snapshot:
        return build_snapshot(self.upstream.port, self.listen_port, prefix, stat_prefix)

    def get(self, path: str) -> int:
        return http_request(self.listen_port, path, timeout=2.0).status

    def stats(self) -> dict[str, int]:
        """Every subscription's update counters."""
        found = self.envoy.stats(r"\.update_")
        return {f"{s}.{o}": found.get(f"{s}.{o}", 0) for s in SUBSCRIPTIONS for o in OUTCOMES}

    def connected(self) -> int:
        stats = self.envoy.stats(r"^control_plane\.connected_state$")
        return stats["control_plane.connected_state"]

    def dump(self) -> dict[str, Any]:
        dumped: dict[str, Any] = json.loads(self.envoy.admin("/config_dump"))
        return dumped

    def versions(self) -> dict[str, str]:
        """Versions of the dynamic cluster, listener and route in ``/config_dump``.

        After a NACK, ``dynamic_listeners`` also holds a nameless ``error_state`` entry.
        """
        found: dict[str, str] = {}
        for config in self.dump()["configs"]:
            kind = config["@type"].rsplit(".", 1)[-1]
            if kind == "ClustersConfigDump":
                for entry in config.get("dynamic_active_clusters", []):
                    if entry["cluster"]["name"] == BACKEND:
                        found[CLUSTER] = entry["version_info"]
            elif kind == "ListenersConfigDump":
                for entry in config.get("dynamic_listeners", []):
                    if entry.get("name") == LISTENER_NAME:
                        found[LISTENER] = entry["active_state"]["version_info"]
            elif kind == "RoutesConfigDump":
                for entry in config.get("dynamic_route_configs", []):
                    if entry["route_config"]["name"] == ROUTE_NAME:
                        found[ROUTE] = entry["version_info"]
        return found

    def expected_versions(self, snapshot: Snapshot) -> dict[str, str]:
        """What ``versions()`` shows once ``snapshot`` is applied (delta: per resource)."""
        names = {CLUSTER: BACKEND, LISTENER: LISTENER_NAME, ROUTE: ROUTE_NAME}
        if self.delta:
            return {t: snapshot.resource_versions[t][name] for t, name in names.items()}
        return {t: snapshot.versions[t] for t in names}


@pytest.fixture(name="gateway", params=["GRPC", "DELTA_GRPC"])
async def fixture_gateway(
    request: pytest.FixtureRequest, launcher: Launcher, upstream: Upstream
) -> AsyncIterator[Gateway]:
    cache = SnapshotCache()
    ads = AdsProcessSide(cache)
    ads_port = await ads.start()
    admin_port, listen_port = free_port(), free_port()
    gateway_snapshot = build_snapshot(upstream.port, listen_port, "/v1", LISTENER_NAME)
    cache.set(GATEWAY, gateway_snapshot)
    config = bootstrap(admin_port, ads_port, request.param)
    envoy = await blocking(launcher.envoy, config, admin_port=admin_port)
    gateway = Gateway(envoy, ads, ads_port, listen_port, upstream, request.param == "DELTA_GRPC")
    try:
        await eventually(lambda: gateway.get("/v1/ready") == 200)
        await eventually(ads.acked_everything)
        yield gateway
    finally:
        await blocking(envoy.stop)
        await gateway.ads.stop()  # the restart test replaces the first one (already stopped)


class TestServing:
    async def test_requests_reach_upstream_and_config_dump_shows_versions(
        self, gateway: Gateway
    ) -> None:
        """Envoy routes through ADS-served resources; /config_dump carries the served versions."""
        seen = len(gateway.upstream.requests())
        assert await blocking(gateway.get, "/v1/hello") == 200
        assert gateway.upstream.requests()[seen:][-1].path == "/v1/hello"
        assert await blocking(gateway.get, "/v2/hello") == 404
        snapshot = gateway.ads.cache.get(GATEWAY)
        assert snapshot is not None
        assert await blocking(gateway.versions) == gateway.expected_versions(snapshot)
        assert gateway.ads.count("mixerless_xds_nacks_total", type="Listener") == 0

    async def test_route_change_applied_within_a_second(self, gateway: Gateway) -> None:
        """A new route prefix published to the cache changes Envoy's behaviour within 1 s."""
        updated = gateway.snapshot(prefix="/v2")
        started = time.monotonic()
        gateway.ads.cache.set(GATEWAY, updated)
        await eventually(lambda: gateway.get("/v2/x") == 200, within=PUSH_DEADLINE)
        elapsed = time.monotonic() - started
        assert elapsed < PUSH_DEADLINE
        assert await blocking(gateway.get, "/v1/x") == 404
        assert [gateway.ads.pushes(t) for t in ORDER] == [1, 1, 1, 2]  # only RDS again

    async def test_invalid_listener_nacked_once_and_old_config_kept(self, gateway: Gateway) -> None:
        """An HCM with an empty stat_prefix is NACKed once, never resent; the old one serves."""
        before = await blocking(gateway.stats)
        versions_before = await blocking(gateway.versions)
        listener_pushes = gateway.ads.pushes(LISTENER)
        bad = gateway.snapshot(stat_prefix="")
        gateway.ads.cache.set(GATEWAY, bad)
        await eventually(
            lambda: gateway.ads.count("mixerless_xds_nacks_total", type="Listener") == 1
        )
        await asyncio.sleep(2.0)  # Envoy does not retry; the server must not resend
        after = await blocking(gateway.stats)
        assert after[LDS_REJECTED] == before[LDS_REJECTED] + 1 == 1
        assert gateway.ads.pushes(LISTENER) == listener_pushes + 1
        assert gateway.ads.count("mixerless_xds_nacks_total", type="Listener") == 1
        [stream] = gateway.ads.servicer.debug_state()["streams"]
        nack = stream["types"][LISTENER]["last_nack"]
        assert nack["version"] == bad.versions[LISTENER]
        assert "stat_prefix" in nack["message"] or "StatPrefix" in nack["message"]
        assert await blocking(gateway.get, "/v1/still") == 200
        assert (await blocking(gateway.versions))[LISTENER] == versions_before[LISTENER]
        gateway.ads.cache.set(GATEWAY, bad)  # republished unchanged: still not resent
        await asyncio.sleep(0.5)
        assert gateway.ads.pushes(LISTENER) == listener_pushes + 1

    async def test_keepalive_pings_do_not_reset_the_stream(self, gateway: Gateway) -> None:
        """With Envoy pinging every 1 s, the ADS stream stays the same one for over 5 s."""
        await asyncio.sleep(KEEPALIVE_WATCH)
        assert gateway.ads.opens() == 1
        assert await blocking(gateway.connected) == 1
        stats = await blocking(gateway.stats)
        assert [stats[f"{name}.update_failure"] for name in SUBSCRIPTIONS] == [0, 0, 0, 0]


class TestReconnect:
    async def test_restarted_server_causes_no_churn(self, gateway: Gateway) -> None:
        """A restarted ADS server with the same snapshot sends the reconnected Envoy nothing."""
        # Measured on Envoy 1.40 (both variants): the lost stream and every refused
        # reconnection add one update_attempt and one update_failure to each subscription;
        # with nothing sent, update_success and update_rejected stay put.
        before = await blocking(gateway.stats)
        versions = await blocking(gateway.versions)
        await gateway.ads.stop()
        await eventually(lambda: gateway.connected() == 0)
        restarted = AdsProcessSide(gateway.ads.cache)
        assert await restarted.start(gateway.ads_port) == gateway.ads_port
        gateway.ads = restarted
        await eventually(lambda: gateway.connected() == 1)
        await eventually(lambda: len(restarted.requested_types()) == len(ORDER))
        await asyncio.sleep(1.0)
        assert restarted.opens() == 1 and restarted.pushes() == 0
        after = await blocking(gateway.stats)
        for name in SUBSCRIPTIONS:
            grew = {o: after[f"{name}.{o}"] - before[f"{name}.{o}"] for o in OUTCOMES}
            assert grew["update_success"] == grew["update_rejected"] == 0, (name, grew)
            assert grew["update_attempt"] == grew["update_failure"] >= 1, (name, grew)
        assert await blocking(gateway.versions) == versions
        assert await blocking(gateway.get, "/v1/after-restart") == 200
        updated = gateway.snapshot(prefix="/v3")
        gateway.ads.cache.set(GATEWAY, updated)
        await eventually(lambda: gateway.get("/v3/x") == 200, within=PUSH_DEADLINE)
        assert restarted.pushes() == 1
