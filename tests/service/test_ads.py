"""The ADS server through a real grpc.aio server, with a grpc.aio client acting as Envoy.

The client speaks both variants (SotW and delta) the way Envoy does: the first request of
a type names the node, every response is ACKed or NACKed by echoing its nonce. Resources
are minimal protos; only their names and content hashes matter to the protocol.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from services import envoy_api as api
from services.clock import ManualClock
from services.grpc_server import GrpcServer, ServerOptions
from services.metrics import Metrics
from services.xds.cache import SnapshotCache
from services.xds.server import AdsServicer
from services.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, Snapshot

GATEWAY = "gw"
SILENCE = 0.3  # how long "no response" is watched for
FIRST_READ = 2.0


def assignment(cluster: str, zone: str) -> Any:
    """A ClusterLoadAssignment whose content depends on ``zone``."""
    message = api.ClusterLoadAssignment(cluster_name=cluster)
    message.endpoints.add().locality.zone = zone
    return message


def snapshot(
    clusters: Mapping[str, str] | None = None,
    endpoints: Mapping[str, str] | None = None,
    listeners: Mapping[str, str] | None = None,
    routes: Mapping[str, str] | None = None,
) -> Snapshot:
    """A snapshot of named resources; each value is a tag that changes the content hash."""
    return Snapshot.build(
        {
            CLUSTER: {n: api.Cluster(name=n, alt_stat_name=t) for n, t in (clusters or {}).items()},
            ENDPOINT: {n: assignment(n, t) for n, t in (endpoints or {}).items()},
            LISTENER: {
                n: api.Listener(name=n, stat_prefix=t) for n, t in (listeners or {}).items()
            },
            ROUTE: {
                n: api.RouteConfiguration(name=n, internal_only_headers=[t])
                for n, t in (routes or {}).items()
            },
        }
    )


BASE_CLUSTERS = {"c1": "a", "c2": "a"}
BASE_ENDPOINTS = {"c1": "a", "c2": "a"}
BASE_ROUTES = {"r1": "a", "r2": "a"}


def with_listeners(listeners: Mapping[str, str]) -> Snapshot:
    """BASE with other listeners."""
    return snapshot(BASE_CLUSTERS, BASE_ENDPOINTS, listeners, BASE_ROUTES)


BASE = with_listeners({"l1": "a", "l2": "a"})
BAD = {"l1": "bad", "l2": "a"}  # listener tags of an update the client rejects


def names(response: Any) -> list[str]:
    """The resource names of a SotW response, in order."""
    found = []
    for packed in response.resources:
        message = {
            CLUSTER: api.Cluster,
            ENDPOINT: api.ClusterLoadAssignment,
            LISTENER: api.Listener,
            ROUTE: api.RouteConfiguration,
        }[packed.type_url]()
        packed.Unpack(message)
        found.append(getattr(message, "name", "") or message.cluster_name)
    return found


class Ads:
    """A started ADS server: cache, servicer, metrics and the port."""

    def __init__(self, cache: SnapshotCache, servicer: AdsServicer, metrics: Metrics) -> None:
        self.cache = cache
        self.servicer = servicer
        self.metrics = metrics
        self.server: GrpcServer | None = None
        self.port = 0
        self.nodes: dict[str, str] = {}  # node id -> key, before the cluster rule

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def pushes(self, type_url: str) -> float:
        return self.count("mixerless_xds_pushes_total", type=type_url.rsplit(".", 1)[-1])


class Client:
    """An Envoy-like ADS client: a reader task queues every response it receives."""

    def __init__(self, ads: Ads, channel: grpc.aio.Channel, *, delta: bool, cluster: str) -> None:
        stub = api.AggregatedDiscoveryServiceStub(channel)
        self.ads = ads
        self.delta = delta
        self.call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self.node_cluster = cluster
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.ended: grpc.aio.AioRpcError | None = None
        self._sent_first = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            self.ended = exc

    async def send(self, type_url: str, *, error: str | None = None, **fields: Any) -> None:
        """One request; the first carries the node (like ``set_node_on_first_message_only``)."""
        message = api.DeltaDiscoveryRequest if self.delta else api.DiscoveryRequest
        request = message(type_url=type_url, **fields)
        if error is not None:
            request.error_detail.code = grpc.StatusCode.INTERNAL.value[0]
            request.error_detail.message = error
        if not self._sent_first:
            request.node.id = "envoy-1"
            request.node.cluster = self.node_cluster
            self._sent_first = True
        await self.call.write(request)

    async def ack(self, response: Any, *, counted: bool = True, **fields: Any) -> None:
        """ACK ``response``; unless ``counted`` is False, wait until the server counted it."""
        if not self.delta:
            fields.setdefault("version_info", response.version_info)
        label = response.type_url.rsplit(".", 1)[-1]
        before = self.ads.count("mixerless_xds_acks_total", type=label)
        await self.send(response.type_url, response_nonce=response.nonce, **fields)
        for _ in range(200):
            if not counted or self.ads.count("mixerless_xds_acks_total", type=label) > before:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"ACK of {response.nonce} not counted")

    async def nack(self, response: Any, error: str, accepted: str = "", **fields: Any) -> None:
        if not self.delta:
            fields["version_info"] = accepted
        await self.send(response.type_url, response_nonce=response.nonce, error=error, **fields)

    async def recv(self, within: float = FIRST_READ) -> Any:
        return await asyncio.wait_for(self.responses.get(), within)

    async def silent(self, seconds: float = SILENCE) -> None:
        """Assert that nothing arrives for ``seconds``."""
        try:
            response = await asyncio.wait_for(self.responses.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {response}")

    async def finished(self) -> None:
        """Wait (up to 2 s) until the server ended the call."""
        await asyncio.wait_for(asyncio.shield(self._reader), 2.0)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


Connect = Callable[..., Any]


@pytest.fixture(name="ads")
async def fixture_ads() -> AsyncIterator[Ads]:
    cache = SnapshotCache()
    metrics = Metrics()
    nodes: dict[str, str] = {}

    def key_for_node(node: Any) -> str | None:
        """The node's entry in ``nodes``, else its cluster if that has a snapshot."""
        if node.id in nodes:
            return nodes[node.id]
        return node.cluster if cache.get(node.cluster) is not None else None

    servicer = AdsServicer(cache, key_for_node, metrics, ManualClock())
    ads = Ads(cache, servicer, metrics)
    ads.nodes = nodes
    ads.server = GrpcServer(
        "xds",
        0,
        ServerOptions(host="127.0.0.1"),
        lambda server: api.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server),
        [api.AGGREGATED_DISCOVERY_SERVICE_NAME],
    )
    ads.port = await ads.server.start()
    yield ads
    await ads.server.stop(0.5)


@pytest.fixture(autouse=True)
def no_servicer_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose servicer raised (grpc logs it at ERROR and ends the stream)."""
    yield
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.fixture(name="connect")
async def fixture_connect(ads: Ads) -> AsyncIterator[Connect]:
    opened: list[tuple[grpc.aio.Channel, Client]] = []

    async def connect(*, delta: bool = False, cluster: str = GATEWAY) -> Client:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ads.port}")
        client = Client(ads, channel, delta=delta, cluster=cluster)
        opened.append((channel, client))
        return client

    yield connect
    for channel, client in opened:
        await client.close()
        await channel.close()


@pytest.fixture(name="logs")
def fixture_logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as entries:
        yield entries


def rejected(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "xds update rejected by envoy"]


def delta_names(response: Any) -> list[str]:
    return [resource.name for resource in response.resources]


def versions(type_url: str, snap: Snapshot = BASE) -> dict[str, str]:
    return dict(snap.resource_versions[type_url])


class TestSotwFirstContact:
    @pytest.mark.parametrize("requested", [[], ["*"]])
    async def test_first_wildcard_request_gets_every_resource(
        self, ads: Ads, connect: Connect, requested: list[str]
    ) -> None:
        """A first LDS request (legacy or explicit wildcard) gets every listener, by name."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(LISTENER, resource_names=requested)
        response = await client.recv()
        assert response.type_url == LISTENER
        assert names(response) == ["l1", "l2"]
        assert response.version_info == BASE.versions[LISTENER] and response.nonce

    async def test_key_appearing_later_is_served_in_make_before_break_order(
        self, ads: Ads, connect: Connect
    ) -> None:
        """Requests of a node without snapshot are answered CDS, EDS, LDS, RDS once it has one."""
        client = await connect()
        await client.send(ROUTE, resource_names=["r1"])
        await client.send(LISTENER)
        await client.send(ENDPOINT, resource_names=["c1"])
        await client.send(CLUSTER)
        await client.silent()
        ads.cache.set(GATEWAY, BASE)
        got = [await client.recv() for _ in ORDER]
        assert [r.type_url for r in got] == list(ORDER)
        assert [names(r) for r in got] == [["c1", "c2"], ["c1"], ["l1", "l2"], ["r1"]]
        assert len({r.nonce for r in got}) == 4

    async def test_new_snapshot_pushed_in_make_before_break_order(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A snapshot changing every type is pushed CDS, EDS, LDS, RDS, in that order."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        for type_url, requested in [(ROUTE, ["r1"]), (LISTENER, []), (ENDPOINT, ["c1"])]:
            await client.send(type_url, resource_names=requested)
            await client.ack(await client.recv(), resource_names=requested)
        await client.send(CLUSTER)
        await client.ack(await client.recv())
        ads.cache.set(GATEWAY, snapshot({"c1": "b"}, {"c1": "b"}, {"l1": "b"}, {"r1": "b"}))
        got = [await client.recv() for _ in ORDER]
        assert [r.type_url for r in got] == list(ORDER)


class TestSotwAckNack:
    async def test_ack_gets_no_response(self, ads: Ads, connect: Connect) -> None:
        """An ACK (latest nonce, no error_detail) is not answered: no response loop."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(CLUSTER)
        await client.ack(await client.recv())
        await client.silent()
        assert ads.count("mixerless_xds_acks_total", type="Cluster") == 1
        assert ads.pushes(CLUSTER) == 1

    async def test_nack_logged_counted_and_never_resent(
        self, ads: Ads, connect: Connect, logs: list[dict[str, Any]]
    ) -> None:
        """A NACK is logged and counted; its version is not resent until the snapshot changes."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(LISTENER)
        good = await client.recv()
        await client.ack(good)
        bad = with_listeners(BAD)
        ads.cache.set(GATEWAY, bad)
        pushed = await client.recv()
        assert pushed.version_info == bad.versions[LISTENER]
        await client.nack(pushed, "listener l1: bad stat_prefix", accepted=good.version_info)
        await client.silent()
        ads.cache.set(GATEWAY, bad)  # published again, unchanged
        ads.cache.set(GATEWAY, snapshot(BASE_CLUSTERS, BASE_ENDPOINTS, BAD, {"r1": "b"}))
        await client.silent()
        assert ads.pushes(LISTENER) == 2
        assert ads.count("mixerless_xds_nacks_total", type="Listener") == 1
        assert client.ended is None
        [entry] = rejected(logs)
        assert entry["log_level"] == "warning" and entry["node"] == "envoy-1"
        assert entry["type"] == LISTENER and entry["version"] == bad.versions[LISTENER]
        assert entry["accepted_version"] == good.version_info
        assert entry["message"] == "listener l1: bad stat_prefix"
        [stream] = ads.servicer.debug_state()["streams"]
        state = stream["types"][LISTENER]
        assert state["version_acked"] == good.version_info
        assert state["version_sent"] == bad.versions[LISTENER]
        assert state["last_nack"]["message"] == "listener l1: bad stat_prefix"
        fixed = with_listeners({"l1": "fixed", "l2": "a"})
        ads.cache.set(GATEWAY, fixed)
        assert (await client.recv()).version_info == fixed.versions[LISTENER]


class TestSotwSubscriptions:
    async def test_rds_and_eds_get_only_requested_names(self, ads: Ads, connect: Connect) -> None:
        """RDS and EDS responses carry the requested names only."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(ROUTE, resource_names=["r2"])
        assert names(await client.recv()) == ["r2"]
        await client.send(ENDPOINT, resource_names=["c1"])
        assert names(await client.recv()) == ["c1"]

    async def test_name_requested_before_it_exists_is_sent_when_it_appears(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A requested route that does not exist yet is pushed as soon as a snapshot has it."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(ROUTE, resource_names=["r1", "r9"])
        response = await client.recv()
        assert names(response) == ["r1"]
        await client.ack(response, resource_names=["r1", "r9"])
        await client.silent()
        ads.cache.set(GATEWAY, snapshot(routes={"r1": "a", "r9": "a"}))
        assert names(await client.recv(within=1.0)) == ["r1", "r9"]

    async def test_newly_subscribed_name_is_sent_at_the_same_version(
        self, ads: Ads, connect: Connect
    ) -> None:
        """Adding a name to an ACK gets that resource although the version did not change."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(ROUTE, resource_names=["r1"])
        first = await client.recv()
        await client.ack(first, resource_names=["r1", "r2"])
        second = await client.recv()
        assert names(second) == ["r1", "r2"] and second.version_info == first.version_info

    async def test_removed_listener_is_absent_from_next_lds_response(
        self, ads: Ads, connect: Connect
    ) -> None:
        """LDS responses carry every listener, so a removed one is left out (deleted)."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(LISTENER)
        await client.ack(await client.recv())
        ads.cache.set(GATEWAY, snapshot(listeners={"l1": "a"}))
        assert names(await client.recv(within=1.0)) == ["l1"]

    async def test_explicit_names_end_legacy_wildcard(self, ads: Ads, connect: Connect) -> None:
        """Empty names are a wildcard only until a name was subscribed; then they unsubscribe."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(ROUTE)
        everything = await client.recv()
        assert names(everything) == ["r1", "r2"]
        await client.ack(everything, resource_names=["r1"])
        await client.silent()  # fewer RDS names: nothing new to send
        await client.ack(everything, resource_names=[])
        await client.silent()
        ads.cache.set(GATEWAY, snapshot(routes={"r1": "b", "r2": "b"}))
        await client.silent()


class TestSotwNonces:
    async def test_stale_nonce_is_ignored(self, ads: Ads, connect: Connect) -> None:
        """A request echoing an older nonce than the latest response is ignored."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(ROUTE, resource_names=["r1"])
        first = await client.recv()
        ads.cache.set(GATEWAY, snapshot(routes={"r1": "b", "r2": "a"}))
        second = await client.recv()
        assert first.nonce != second.nonce
        await client.ack(first, counted=False, resource_names=["r1", "r2"])
        await client.silent()
        await client.ack(second, resource_names=["r1", "r2"])
        assert names(await client.recv()) == ["r1", "r2"]


class TestSotwReconnect:
    async def test_reconnect_with_current_versions_gets_nothing(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A new stream whose first requests carry the current versions is sent nothing."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(CLUSTER, version_info=BASE.versions[CLUSTER])
        await client.send(ENDPOINT, version_info=BASE.versions[ENDPOINT], resource_names=["c1"])
        await client.send(LISTENER, version_info=BASE.versions[LISTENER])
        await client.send(ROUTE, version_info=BASE.versions[ROUTE], resource_names=["r1"])
        await client.silent()
        assert sum(ads.pushes(t) for t in ORDER) == 0
        changed = with_listeners({"l1": "b", "l2": "a"})
        ads.cache.set(GATEWAY, changed)
        response = await client.recv(within=1.0)
        assert response.type_url == LISTENER and names(response) == ["l1", "l2"]
        await client.silent()

    async def test_reconnect_with_old_version_gets_current(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A first request carrying another version is answered with the current one."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(LISTENER, version_info="0123456789abcdef")
        assert (await client.recv()).version_info == BASE.versions[LISTENER]


class TestSotwPush:
    async def test_new_snapshot_reaches_idle_stream_within_a_second(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A snapshot published while a stream is idle is pushed within a second."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(LISTENER)
        await client.ack(await client.recv())
        await client.silent()
        started = time.monotonic()
        ads.cache.set(GATEWAY, snapshot(listeners={"l1": "b"}))
        response = await client.recv(within=1.0)
        assert time.monotonic() - started < 1.0
        assert names(response) == ["l1"]


class TestDelta:
    @pytest.mark.parametrize("subscribe", [[], ["*"]])
    async def test_first_wildcard_request_gets_every_resource_with_versions(
        self, ads: Ads, connect: Connect, subscribe: list[str]
    ) -> None:
        """A legacy (nothing named) or explicit ``*`` first request gets every listener."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(LISTENER, resource_names_subscribe=subscribe)
        response = await client.recv()
        assert {r.name: r.version for r in response.resources} == versions(LISTENER)
        assert response.system_version_info == BASE.versions[LISTENER]
        assert list(response.removed_resources) == []

    async def test_ack_gets_no_response(self, ads: Ads, connect: Connect) -> None:
        """A delta ACK is not answered."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(CLUSTER)
        await client.ack(await client.recv())
        await client.silent()
        assert ads.count("mixerless_xds_acks_total", type="Cluster") == 1

    async def test_only_changed_resources_pushed_within_a_second(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A new snapshot sends an idle stream only the resources whose version changed."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(LISTENER)
        await client.ack(await client.recv())
        changed = with_listeners({"l1": "b", "l2": "a"})
        started = time.monotonic()
        ads.cache.set(GATEWAY, changed)
        response = await client.recv(within=1.0)
        assert time.monotonic() - started < 1.0
        assert {r.name: r.version for r in response.resources} == {
            "l1": changed.resource_versions[LISTENER]["l1"]
        }
        assert list(response.removed_resources) == []

    async def test_removed_listener_goes_in_removed_resources(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A listener deleted from the snapshot is announced in removed_resources."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(LISTENER)
        await client.ack(await client.recv())
        ads.cache.set(GATEWAY, snapshot(listeners={"l1": "a"}))
        response = await client.recv(within=1.0)
        assert delta_names(response) == [] and list(response.removed_resources) == ["l2"]

    async def test_missing_name_is_removed_then_sent_when_it_appears(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A subscribed name that does not exist is in removed_resources, sent once it exists."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(ROUTE, resource_names_subscribe=["r1", "r9"])
        response = await client.recv()
        assert delta_names(response) == ["r1"] and list(response.removed_resources) == ["r9"]
        await client.ack(response)
        ads.cache.set(GATEWAY, BASE)
        await client.silent()
        ads.cache.set(GATEWAY, snapshot(routes={"r1": "a", "r9": "a"}))
        response = await client.recv(within=1.0)
        assert delta_names(response) == ["r9"] and list(response.removed_resources) == []

    async def test_nack_logged_counted_and_never_resent(
        self, ads: Ads, connect: Connect, logs: list[dict[str, Any]]
    ) -> None:
        """A delta NACK is logged and counted; the rejected resource is not sent again."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(LISTENER)
        await client.ack(await client.recv())
        bad = with_listeners(BAD)
        ads.cache.set(GATEWAY, bad)
        pushed = await client.recv()
        await client.nack(pushed, "listener l1 rejected")
        ads.cache.set(GATEWAY, bad)
        await client.silent()
        assert ads.pushes(LISTENER) == 2
        assert ads.count("mixerless_xds_nacks_total", type="Listener") == 1
        assert client.ended is None
        [entry] = rejected(logs)
        assert entry["version"] == bad.versions[LISTENER]
        assert entry["message"] == "listener l1 rejected"
        fixed = with_listeners({"l1": "fixed", "l2": "a"})
        ads.cache.set(GATEWAY, fixed)
        assert delta_names(await client.recv(within=1.0)) == ["l1"]

    async def test_reconnect_with_current_versions_gets_nothing(
        self, ads: Ads, connect: Connect
    ) -> None:
        """initial_resource_versions equal to the snapshot's: nothing is sent on reconnect."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(CLUSTER, initial_resource_versions=versions(CLUSTER))
        await client.send(LISTENER, initial_resource_versions=versions(LISTENER))
        routes = {"r1": versions(ROUTE)["r1"]}
        await client.send(ROUTE, resource_names_subscribe=["r1"], initial_resource_versions=routes)
        await client.silent()
        assert sum(ads.pushes(t) for t in ORDER) == 0

    async def test_reconnect_gets_only_what_differs(self, ads: Ads, connect: Connect) -> None:
        """On reconnect only stale resources are sent, and ones the server lacks are removed."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        held = {"l1": versions(LISTENER)["l1"], "l2": "0123456789abcdef", "l9": "0123456789abcdef"}
        await client.send(LISTENER, initial_resource_versions=held)
        response = await client.recv()
        assert delta_names(response) == ["l2"] and list(response.removed_resources) == ["l9"]

    async def test_subscription_change_with_stale_nonce_is_honoured(
        self, ads: Ads, connect: Connect
    ) -> None:
        """A delta subscription carrying an old nonce still gets the new names."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(ROUTE, resource_names_subscribe=["r1"])
        first = await client.recv()
        ads.cache.set(GATEWAY, snapshot(routes={"r1": "b", "r2": "a"}))
        await client.recv()
        await client.send(ROUTE, response_nonce=first.nonce, resource_names_subscribe=["r2"])
        assert delta_names(await client.recv()) == ["r2"]

    async def test_resubscribed_name_is_sent_again(self, ads: Ads, connect: Connect) -> None:
        """Unsubscribing needs no answer; subscribing again gets the resource again."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(ROUTE, resource_names_subscribe=["r1"])
        await client.ack(await client.recv())
        await client.send(ROUTE, resource_names_unsubscribe=["r1"])
        await client.silent()
        await client.send(ROUTE, resource_names_subscribe=["r1"])
        assert delta_names(await client.recv()) == ["r1"]

    async def test_unsubscribe_under_wildcard_is_answered(self, ads: Ads, connect: Connect) -> None:
        """Unsubscribing one name of a wildcard subscription is answered (it is still wanted)."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(LISTENER)
        await client.ack(await client.recv())
        await client.send(LISTENER, resource_names_unsubscribe=["l1", "l7"])
        response = await client.recv()
        assert delta_names(response) == ["l1"] and list(response.removed_resources) == ["l7"]


class TestUnknownNode:
    @pytest.mark.parametrize("delta", [False, True])
    async def test_unknown_node_gets_nothing_and_stays_connected(
        self, ads: Ads, connect: Connect, logs: list[dict[str, Any]], delta: bool
    ) -> None:
        """A node with no key is sent nothing, warned about once, and its stream stays open."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=delta, cluster="elsewhere")
        await client.send(CLUSTER)
        await client.send(LISTENER)
        await client.silent()
        ads.cache.set(GATEWAY, snapshot(listeners={"l1": "b"}))
        await client.silent()
        assert client.ended is None
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [(e["event"], e["node"], e["cluster"]) for e in warnings] == [
            ("xds node matches no gateway; sending it nothing", "envoy-1", "elsewhere")
        ]
        [stream] = ads.servicer.debug_state()["streams"]
        assert stream["key"] is None and stream["cluster"] == "elsewhere"


class TestNodeMapping:
    @pytest.mark.parametrize("delta", [False, True])
    async def test_node_moved_to_another_key_gets_that_snapshot(
        self, ads: Ads, connect: Connect, delta: bool
    ) -> None:
        """When key_for_node maps a connected node elsewhere, the next set() serves that key."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=delta)
        await client.send(LISTENER)
        await client.ack(await client.recv())
        ads.nodes["envoy-1"] = "gw2"
        ads.cache.set("gw2", snapshot(listeners={"l1": "a", "l3": "a"}))
        response = await client.recv(within=1.0)
        if delta:
            assert delta_names(response) == ["l3"] and list(response.removed_resources) == ["l2"]
        else:
            assert names(response) == ["l1", "l3"]
        [stream] = ads.servicer.debug_state()["streams"]
        assert stream["key"] == "gw2"


class TestDebugAndShutdown:
    async def test_debug_state_describes_streams(self, ads: Ads, connect: Connect) -> None:
        """debug_state lists each stream's node, key, and per type the versions sent/ACKed."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(ROUTE, resource_names=["r1"])
        await client.ack(await client.recv(), resource_names=["r1"])
        await client.silent(0.1)
        [stream] = ads.servicer.debug_state()["streams"]
        assert (stream["node"], stream["cluster"], stream["key"]) == ("envoy-1", GATEWAY, GATEWAY)
        assert stream["variant"] == "sotw" and stream["opened_at"] == ManualClock().now()
        assert stream["types"][ROUTE] == {
            "subscribed": ["r1"],
            "version_sent": BASE.versions[ROUTE],
            "version_acked": BASE.versions[ROUTE],
            "nonce": stream["types"][ROUTE]["nonce"],
            "last_nack": None,
        }
        assert ads.count("mixerless_xds_streams", variant="sotw") == 1
        assert ads.count("mixerless_xds_stream_opens_total", variant="sotw") == 1

    async def test_server_stop_ends_streams_quietly(
        self, ads: Ads, connect: Connect, logs: list[dict[str, Any]]
    ) -> None:
        """Stopping the server cancels open streams without errors; they are forgotten."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect(delta=True)
        await client.send(CLUSTER)
        await client.recv()
        assert ads.server is not None
        await ads.server.stop(0.1)
        await client.finished()
        assert client.ended is not None
        assert client.ended.code() == grpc.StatusCode.UNAVAILABLE
        assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
        assert ads.servicer.debug_state() == {"streams": []}
        assert ads.count("mixerless_xds_streams", variant="delta") == 0

    async def test_close_streams_ends_them_with_ok_so_stop_is_quick(
        self, ads: Ads, connect: Connect
    ) -> None:
        """close_streams() ends every stream with OK, so a stop need not wait its grace period."""
        ads.cache.set(GATEWAY, BASE)
        client = await connect()
        await client.send(CLUSTER)
        await client.recv()
        ads.servicer.close_streams()
        await client.finished()
        assert client.ended is None and await client.call.code() == grpc.StatusCode.OK
        assert ads.server is not None
        started = time.monotonic()
        await ads.server.stop(5.0)
        assert time.monotonic() - started < 1.0
