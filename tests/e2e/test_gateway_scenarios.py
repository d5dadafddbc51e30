"""The user's gateway scenarios through a real Envoy that mixerless configures over xDS alone.

One stack for the module (``gateway_stack.start_stack``): ``mixerless serve`` with a
Gateway, a RateLimitPolicy and Istio authorization documents, and an Envoy whose
bootstrap (from ``mixerless bootstrap``) holds only the xDS cluster. None of these tests
changes the policies; the quota test is the only one that spends alice's /product quota.
"""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Launcher
from tests.e2e.gateway_stack import (
    GATEWAY,
    GatewayStack,
    ProviderThread,
    bearer,
    new_marker,
    start_stack,
)
from tests.envoy_proc import Upstream, UpstreamRequest, wait_for_fresh_window

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RATELIMIT = "envoy.filters.http.ratelimit"
ROUTER = "envoy.filters.http.router"


@pytest.fixture(scope="module", name="provider")
def fixture_provider() -> Iterator[ProviderThread]:
    provider = ProviderThread().start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module", name="stack")
def fixture_stack(
    module_launcher: Launcher, upstream: Upstream, provider: ProviderThread
) -> GatewayStack:
    return start_stack(module_launcher, upstream, provider=provider)


def seen_upstream(stack: GatewayStack, marker: str) -> UpstreamRequest:
    """The one request the upstream received carrying ``x-test: marker``."""
    found = [r for r in stack.upstream.requests() if r.headers.get("x-test") == marker]
    assert len(found) == 1, f"upstream saw {len(found)} requests marked {marker}"
    return found[0]


@pytest.mark.envoy
class TestJwtAtTheGateway:
    def test_valid_token_reaches_upstream_as_user_id(self, stack: GatewayStack) -> None:
        """A valid JWT gets 200; upstream sees x-user-id: alice and no Authorization header."""
        marker = new_marker()
        headers = {**bearer("alice"), "x-user-id": "mallory", "x-test": marker}
        reply = stack.request("/api/orders", headers)
        assert reply.status == 200, reply
        seen = seen_upstream(stack, marker)
        assert seen.headers.get("x-user-id") == "alice"
        assert "authorization" not in seen.headers

    def test_expired_token_is_401_with_challenge(self, stack: GatewayStack) -> None:
        """An expired JWT gets 401 'Jwt is expired' with a www-authenticate challenge."""
        reply = stack.request("/api/orders", bearer("expired"))
        assert (reply.status, reply.text()) == (401, "Jwt is expired"), reply
        challenge = reply.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer realm="), reply
        assert 'error="invalid_token"' in challenge

    def test_no_token_where_a_principal_is_required_is_403(self, stack: GatewayStack) -> None:
        """No token on /api (a principal is required): 403 'RBAC: access denied'."""
        reply = stack.request("/api/orders")
        assert (reply.status, reply.text()) == (403, "RBAC: access denied"), reply
        assert stack.request("/public").status == 200


@pytest.mark.envoy
class TestIpAllowlist:
    @pytest.mark.parametrize(
        ("forwarded_for", "status"),
        [
            ("203.0.113.9", 200),  # the trusted proxy appended the office client
            ("198.51.100.1", 403),  # a client outside the office
            ("203.0.113.9, 198.51.100.1", 403),  # spoofed: only the proxy's entry counts
            (None, 403),  # no proxy at all: the peer (loopback) is not in the office
        ],
    )
    def test_only_the_office_reaches_internal(
        self, stack: GatewayStack, forwarded_for: str | None, status: int
    ) -> None:
        """/internal/* admits 203.0.113.0/24 as the client address past one trusted proxy."""
        headers = {} if forwarded_for is None else {"x-forwarded-for": forwarded_for}
        reply = stack.request("/internal/reports", headers)
        assert reply.status == status, reply
        if status == 403:
            assert reply.text() == "RBAC: access denied"

    def test_other_paths_are_not_restricted(self, stack: GatewayStack) -> None:
        """The allowlist covers /internal only: /public answers any client."""
        reply = stack.request("/public", {"x-forwarded-for": "198.51.100.1"})
        assert reply.status == 200, reply


@pytest.mark.envoy
class TestCustomProvider:
    def test_provider_allows_its_path(self, stack: GatewayStack, provider: ProviderThread) -> None:
        """/orders/1 is sent to the provider, which allows it; its header goes upstream."""
        before = len(provider.requests())
        marker = new_marker()
        reply = stack.request("/orders/1", {"x-test": marker})
        assert reply.status == 200, reply
        asked = provider.requests()[before:]
        assert [r.target for r in asked] == ["/orders/1"]
        assert seen_upstream(stack, marker).headers.get("x-orders-user") == "from-provider"

    def test_provider_denies_its_path(self, stack: GatewayStack, provider: ProviderThread) -> None:
        """The provider's 403, body and allowed deny header go back to the client."""
        before = len(provider.requests())
        reply = stack.request("/orders/deny-42")
        assert (reply.status, reply.text()) == (403, "orders: denied"), reply
        assert reply.headers.get("x-orders-reason") == "not your order"
        assert [r.target for r in provider.requests()[before:]] == ["/orders/deny-42"]

    def test_other_paths_never_reach_the_provider(
        self, stack: GatewayStack, provider: ProviderThread
    ) -> None:
        """/public and /api are decided without asking the provider at all."""
        before = len(provider.requests())
        assert stack.request("/public").status == 200
        assert stack.request("/api/orders", bearer("bob")).status == 200
        assert stack.request("/orders").status == 200  # "/orders/*" does not match /orders
        assert provider.requests()[before:] == []


@pytest.mark.envoy
class TestPerUserQuota:
    def test_101st_call_is_429_and_counted_by_verified_subject(self, stack: GatewayStack) -> None:
        """alice's 101st /product call in a minute is 429; forged x-user-id changes nothing."""
        wait_for_fresh_window(60, at_least=10)
        replies = [
            stack.request(f"/product/{i}", {**bearer("alice"), "x-user-id": new_marker()})
            for i in range(101)
        ]
        statuses = [r.status for r in replies]
        assert statuses == [200] * 100 + [429], statuses
        assert [r.headers.get("x-ratelimit-remaining") for r in replies[:3]] == ["99", "98", "97"]
        over = replies[100]
        assert over.headers.get("x-ratelimit-limit") == "100, 100;w=60", over
        assert over.headers.get("x-ratelimit-remaining") == "0", over
        # bob claiming to be alice is still counted as bob, on his own fresh quota.
        bob = stack.request("/product", {**bearer("bob"), "x-user-id": "alice"})
        assert bob.status == 200, bob
        assert bob.headers.get("x-ratelimit-remaining") == "99", bob


def _listener(stack: GatewayStack) -> dict[str, Any]:
    listeners = stack.dump_section("ListenersConfigDump").get("dynamic_listeners", [])
    assert [entry["name"] for entry in listeners] == [f"{GATEWAY}/http"]
    return dict(listeners[0]["active_state"]["listener"])


def _routes(stack: GatewayStack) -> dict[str, dict[str, Any]]:
    configs = stack.dump_section("RoutesConfigDump").get("dynamic_route_configs", [])
    return {
        route["name"]: route
        for config in configs
        for host in config["route_config"]["virtual_hosts"]
        for route in host["routes"]
    }


@pytest.mark.envoy
class TestGeneratedConfig:
    def test_bootstrap_holds_only_the_xds_cluster(self, stack: GatewayStack) -> None:
        """Envoy's static config is the xDS cluster alone; everything else came over ADS."""
        clusters = stack.dump_section("ClustersConfigDump")
        assert [c["cluster"]["name"] for c in clusters.get("static_clusters", [])] == [
            "mixerless_xds"
        ]
        assert stack.dump_section("ListenersConfigDump").get("static_listeners", []) == []
        dynamic = {c["cluster"]["name"] for c in clusters.get("dynamic_active_clusters", [])}
        assert {"mixerless_authz", "mixerless_ratelimit", f"{GATEWAY}/products"} <= dynamic

    def test_listener_filters_in_order(self, stack: GatewayStack) -> None:
        """The dynamic listener runs ext_authz, ratelimit, router, in that order."""
        chain = _listener(stack)["filter_chains"][0]
        hcm = chain["filters"][0]["typed_config"]
        assert [f["name"] for f in hcm["http_filters"]] == [EXT_AUTHZ, RATELIMIT, ROUTER]
        assert hcm["use_remote_address"] is True
        assert hcm["xff_num_trusted_hops"] == 1

    def test_products_route_quota_is_counted_inside_check(self, stack: GatewayStack) -> None:
        """The products route has no rate limit actions: its Check names the route (one hop)."""
        routes = _routes(stack)
        assert "rate_limits" not in routes["products"]["route"]
        products = routes["products"]["typed_per_filter_config"][EXT_AUTHZ]
        assert "context_extensions" in products["check_settings"]  # config_dump redacts values
        health = routes["health"]["typed_per_filter_config"][EXT_AUTHZ]
        assert health.get("disabled") is True

    def test_no_update_rejected_and_no_nacks(self, stack: GatewayStack) -> None:
        """Envoy rejected no xDS update, and mixerless counts ACKs and zero NACKs."""
        counters = stack.xds_counters()
        rejected = {k: v for k, v in counters.items() if k.endswith("update_rejected")}
        assert "listener_manager.lds.update_rejected" in rejected
        assert "cluster_manager.cds.update_rejected" in rejected
        assert set(rejected.values()) == {0}, rejected
        metrics = stack.metrics()
        nacks = {k: v for k, v in metrics.items() if k.startswith("mixerless_xds_nacks_total")}
        assert all(v == 0 for v in nacks.values()), nacks
        acks = {k: v for k, v in metrics.items() if k.startswith("mixerless_xds_acks_total")}
        assert len(acks) == 4 and all(v >= 1 for v in acks.values()), acks
