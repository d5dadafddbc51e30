"""Snapshots built from a gateway: contents, stable versions, consistency; renders Envoy accepts."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from services.authz.mesh_config import MeshSettings
from services.authz.paths import PathNormalization
from services.catalog.bridge import listener_settings
from services.catalog.loader import LoadOptions, PolicySet, load_directory
from services.xds.build import AUTHZ_CLUSTER, RATELIMIT_CLUSTER, Services, mixerless_resources
from services.xds.gateway import Endpoint
from services.xds.gateway_config import compile_gateway_config, gateway_resources, snapshot
from services.xds.istio import istio_documents, mesh_config_snippet
from services.xds.render import bootstrap, static_config, to_yaml
from services.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    InconsistentSnapshotError,
    Snapshot,
    check_consistent,
)
from tests.envoy_proc import find_envoy

ROOT = Path(__file__).parent.parent.parent.parent
SERVICES = Services(Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 8081))


@pytest.fixture(name="policies")
def fixture_policies() -> PolicySet:
    return load_directory(ROOT / "policies", LoadOptions())


def resources(policies: PolicySet, mesh: MeshSettings | None = None) -> dict:  # type: ignore[type-arg]
    compiled = policies.xds.gateways[0]
    if mesh is not None:
        settings = listener_settings(mesh)
        compiled = compile_gateway_config(compiled.gateway, compiled.policies, settings)
    return gateway_resources(compiled, SERVICES)


class TestBuild:
    def test_listener_filters_in_order(self, policies: PolicySet) -> None:
        """The listener runs ext_authz, then ratelimit, then the router, over RDS."""
        [listener] = resources(policies)[LISTENER].values()
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert [f["name"] for f in hcm["http_filters"]] == [
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.router",
        ]
        assert hcm["rds"]["route_config_name"] == "public/http"
        assert hcm["use_remote_address"] is True

    def test_routes_carry_authz_context_and_quota(self, policies: PolicySet) -> None:
        """Routes name the gateway and route for authz, which counts the quota (no actions)."""
        routes = {
            r["name"]: r
            for r in resources(policies)[ROUTE]["public/http"]["virtual_hosts"][0]["routes"]
        }
        per_route = routes["products"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert per_route["check_settings"]["context_extensions"] == {
            "namespace": "istio-system",
            "gateway": "public",
            "labels": "istio=ingressgateway",
            "route": "products",
        }
        assert "rate_limits" not in routes["products"]["route"]  # counted inside Check
        assert routes["health"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"][
            "disabled"
        ]
        assert "rate_limits" not in routes["default"]["route"]

    @pytest.mark.parametrize(
        ("mode", "merge", "escaped"),
        [
            (PathNormalization.BASE, False, None),
            (PathNormalization.MERGE_SLASHES, True, None),
            (PathNormalization.DECODE_AND_MERGE_SLASHES, True, "UNESCAPE_AND_FORWARD"),
        ],
    )
    def test_normalization_follows_mesh_config(
        self, policies: PolicySet, mode: PathNormalization, merge: bool, escaped: str | None
    ) -> None:
        """Envoy normalizes paths as meshConfig pathNormalization says (as Istio sets it up)."""
        mesh = MeshSettings(path_normalization=mode, num_trusted_proxies=2)
        [listener] = resources(policies, mesh)[LISTENER].values()
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["normalize_path"] is True and hcm["merge_slashes"] is merge
        assert hcm.get("path_with_escaped_slashes_action") == escaped
        assert hcm["xff_num_trusted_hops"] == 2

    def test_versions_are_content_hashes(self, policies: PolicySet) -> None:
        """The same policies give the same versions (stable across restarts)."""
        compiled = policies.xds.gateways[0]
        first = snapshot(compiled, SERVICES)
        again = snapshot(compiled, SERVICES)
        assert first.versions == again.versions
        moved = snapshot(compiled, Services(Endpoint("10.0.0.1", 9001), SERVICES.ratelimit))
        assert moved.versions[CLUSTER] == first.versions[CLUSTER]
        assert moved.versions[ENDPOINT] != first.versions[ENDPOINT]

    def test_inconsistent_snapshot_refused(self) -> None:
        """A snapshot whose routes name a missing cluster is refused."""
        snapshot = Snapshot.build({})
        with pytest.raises(InconsistentSnapshotError, match="Cluster backend referenced"):
            check_consistent(snapshot, {CLUSTER: frozenset({"backend"})})


def lb_addresses(assignment: dict) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    [locality] = assignment["endpoints"]
    return [
        (a["address"], a["port_value"])
        for a in (e["endpoint"]["address"]["socket_address"] for e in locality["lb_endpoints"])
    ]


class TestMixerlessClusters:
    """The clusters that reach mixerless: one endpoint per service, or one per worker."""

    WORKERS = Services(
        tuple(Endpoint("127.0.0.1", 20000 + 3 * i) for i in range(3)),
        tuple(Endpoint("127.0.0.1", 20001 + 3 * i) for i in range(3)),
    )

    def test_one_endpoint_is_what_it_always_was(self, policies: PolicySet) -> None:
        """Services(Endpoint, Endpoint) and a one-endpoint tuple give today's clusters, byte
        for byte (the resource versions are content hashes of their canonical JSON)."""
        compiled = policies.xds.gateways[0]
        single = Services((SERVICES.authz[0],), (SERVICES.ratelimit[0],))
        assert single == SERVICES
        versions = snapshot(compiled, single).resource_versions
        assert {name: versions[CLUSTER][name] for name in (AUTHZ_CLUSTER, RATELIMIT_CLUSTER)} == {
            AUTHZ_CLUSTER: "0e241bad9f9eea2e",
            RATELIMIT_CLUSTER: "3a82302aeadf3666",
        }
        assert {name: versions[ENDPOINT][name] for name in (AUTHZ_CLUSTER, RATELIMIT_CLUSTER)} == {
            AUTHZ_CLUSTER: "98a211e90f45253a",
            RATELIMIT_CLUSTER: "599ef612a2980214",
        }
        built = mixerless_resources(compiled.gateway, SERVICES)
        assert lb_addresses(built[ENDPOINT][AUTHZ_CLUSTER]) == [("127.0.0.1", 9001)]

    def test_every_worker_is_an_endpoint(self, policies: PolicySet) -> None:
        """With one endpoint per worker, each cluster lists them all, in order, over EDS."""
        built = mixerless_resources(policies.xds.gateways[0].gateway, self.WORKERS)
        assert lb_addresses(built[ENDPOINT][AUTHZ_CLUSTER]) == [
            ("127.0.0.1", 20000),
            ("127.0.0.1", 20003),
            ("127.0.0.1", 20006),
        ]
        assert lb_addresses(built[ENDPOINT][RATELIMIT_CLUSTER]) == [
            ("127.0.0.1", 20001),
            ("127.0.0.1", 20004),
            ("127.0.0.1", 20007),
        ]
        assert built[CLUSTER][AUTHZ_CLUSTER]["type"] == "EDS"
        # Only the endpoints changed: the clusters themselves are today's.
        assert (
            built[CLUSTER]
            == mixerless_resources(policies.xds.gateways[0].gateway, SERVICES)[CLUSTER]
        )

    def test_worker_host_names_are_resolved_by_envoy(self, policies: PolicySet) -> None:
        """Host names make a STRICT_DNS cluster whose load assignment lists every worker."""
        services = Services(
            (Endpoint("mixerless", 20000), Endpoint("mixerless", 20003)),
            Endpoint("mixerless", 8081),
        )
        built = mixerless_resources(policies.xds.gateways[0].gateway, services)
        cluster = built[CLUSTER][AUTHZ_CLUSTER]
        assert cluster["type"] == "STRICT_DNS"
        assert lb_addresses(cluster["load_assignment"]) == [
            ("mixerless", 20000),
            ("mixerless", 20003),
        ]
        assert AUTHZ_CLUSTER not in built[ENDPOINT]

    def test_a_gateway_address_wins_over_the_workers(self, policies: PolicySet) -> None:
        """A Gateway that names its own authz address gets that one endpoint, not ours."""
        gateway = policies.xds.gateways[0].gateway
        elsewhere = Endpoint("10.9.9.9", 9191)
        gateway = dataclasses.replace(
            gateway, authz=dataclasses.replace(gateway.authz, address=elsewhere)
        )
        built = mixerless_resources(gateway, self.WORKERS)
        assert lb_addresses(built[ENDPOINT][AUTHZ_CLUSTER]) == [("10.9.9.9", 9191)]
        assert len(lb_addresses(built[ENDPOINT][RATELIMIT_CLUSTER])) == 3

    def test_a_service_needs_an_endpoint(self) -> None:
        """An empty endpoint list is refused where it is made, not sent to Envoy."""
        with pytest.raises(ValueError, match="authz needs at least one endpoint"):
            Services((), SERVICES.ratelimit)

    @pytest.mark.envoy
    def test_workers_render_valid_envoy_config(self, tmp_path: Path, policies: PolicySet) -> None:
        """A static render with three workers per service passes envoy --mode validate."""
        resources = gateway_resources(policies.xds.gateways[0], self.WORKERS)
        TestRenders().validate(tmp_path, static_config(resources, 9901))


DIRECT_GATEWAY = """\
apiVersion: mixerless.io/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: shop, labels: {app: shop}}
spec:
  listeners: [{name: http, port: 10000}]
  routes:
  - name: maintenance
    match: {prefix: /orders}
    directResponse: {status: 503, body: {string: "down: back at 9"}}
  - name: blob
    match: {exact: /blob}
    directResponse: {status: 200, body: {bytes: AP8K}}
    authz: false
  - name: empty
    match: {exact: /empty}
    directResponse: {status: 204, body: {string: ""}}
  - name: default
    backend: {endpoints: ["127.0.0.1:9000"]}
---
apiVersion: mixerless.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: everywhere, namespace: shop}
spec:
  targetRef: {name: edge}
  limit: {requests: 5, unit: minute}
"""


def direct_resources(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    (tmp_path / "edge.yaml").write_text(DIRECT_GATEWAY)
    return gateway_resources(load_directory(tmp_path, LoadOptions()).xds.gateways[0], SERVICES)


def direct_routes(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    [host] = direct_resources(tmp_path)[ROUTE]["edge/http"]["virtual_hosts"]
    return {route["name"]: route for route in host["routes"]}


class TestDirectResponseRoutes:
    def test_route_is_a_direct_response_with_authz_context(self, tmp_path: Path) -> None:
        """A directResponse route is Envoy's direct_response plus the usual ext_authz setting."""
        routes = direct_routes(tmp_path)
        authz = routes["maintenance"]["typed_per_filter_config"]
        assert routes["maintenance"] == {
            "name": "maintenance",
            "match": {"prefix": "/orders"},
            "direct_response": {"status": 503, "body": {"inline_string": "down: back at 9"}},
            "typed_per_filter_config": authz,
        }
        assert authz["envoy.filters.http.ext_authz"]["check_settings"] == {
            "context_extensions": {
                "namespace": "shop",
                "gateway": "edge",
                "labels": "app=shop",
                "route": "maintenance",
            }
        }

    def test_bytes_body_and_authz_off(self, tmp_path: Path) -> None:
        """A bytes body goes out as inline_bytes (base64); authz: false disables ext_authz."""
        blob = direct_routes(tmp_path)["blob"]
        assert blob["direct_response"] == {"status": 200, "body": {"inline_bytes": "AP8K"}}
        assert blob["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"]

    def test_no_cluster_no_endpoints(self, tmp_path: Path) -> None:
        """Only backend routes get a cluster and an endpoint assignment."""
        resources = direct_resources(tmp_path)
        own = {name for name in resources[CLUSTER] if name.startswith("edge/")}
        assert own == {"edge/default"}
        assert set(resources[ENDPOINT]) == {
            "edge/default",
            "mixerless_authz",
            "mixerless_ratelimit",
        }

    def test_policy_for_every_route_skips_direct_responses(self, tmp_path: Path) -> None:
        """A policy without routes counts on backend routes (inside Check) and no other."""
        routes = direct_routes(tmp_path)
        assert "rate_limits" not in routes["default"]["route"]
        for name in ("maintenance", "blob", "empty"):
            assert "route" not in routes[name]
            assert set(routes[name]["typed_per_filter_config"]) == {"envoy.filters.http.ext_authz"}


@pytest.mark.envoy
class TestRenders:
    def validate(self, tmp_path: Path, config: dict) -> None:  # type: ignore[type-arg]
        path = tmp_path / "envoy.yaml"
        path.write_text(to_yaml(config))
        result = subprocess.run(
            [find_envoy(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_static_render_is_valid_envoy_config(self, tmp_path: Path, policies: PolicySet) -> None:
        """mixerless render's static config passes envoy --mode validate."""
        self.validate(tmp_path, static_config(resources(policies), 9901))

    def test_direct_response_render_is_valid_envoy_config(self, tmp_path: Path) -> None:
        """Direct responses (string, bytes, empty body) pass envoy --mode validate."""
        resources = direct_resources(tmp_path)
        self.validate(tmp_path, static_config(resources, 9901))

    def test_bootstrap_is_valid_envoy_config(self, tmp_path: Path) -> None:
        """mixerless bootstrap's output (SotW and delta) passes envoy --mode validate."""
        self.validate(tmp_path, bootstrap("public-gateway", "127.0.0.1", 18000))
        self.validate(tmp_path, bootstrap("public-gateway", "127.0.0.1", 18000, delta=True))

    def test_bootstrap_redials_the_xds_service_within_five_seconds(self) -> None:
        """A gateway whose xds service went away retries with backoff capped at 5 s, not 30."""
        ads = bootstrap("public-gateway", "127.0.0.1", 18000)["dynamic_resources"]["ads_config"]
        backoff = ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]
        assert backoff == {"base_interval": "0.5s", "max_interval": "5s"}

    def test_istio_render(self, policies: PolicySet) -> None:
        """The Istio render selects the gateway by labels and names the mixerless service."""
        compiled = policies.xds.gateways[0]
        gateway = compiled.gateway
        documents = istio_documents(
            gateway,
            compiled.policies,
            service="mixerless.istio-system.svc.cluster.local",
            ratelimit_port=8081,
            authz_port=9001,
        )
        text = yaml.safe_dump_all(documents)
        assert "outbound|8081||mixerless.istio-system.svc.cluster.local" in text
        assert documents[0]["spec"]["workloadSelector"] == {"labels": {"istio": "ingressgateway"}}
        assert [d["kind"] for d in documents] == ["EnvoyFilter", "EnvoyFilter"]
        snippet = mesh_config_snippet(
            gateway, service="mixerless.istio-system.svc.cluster.local", authz_port=9001
        )
        provider = snippet["extensionProviders"][0]["envoyExtAuthzGrpc"]
        assert (provider["port"], provider["timeout"]) == (9001, "1.0s")
