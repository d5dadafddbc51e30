"""A real Envoy, configured by ``mixerless bootstrap`` and xDS, against ``serve --workers 2``.

The xds service (in the parent) lists each worker's own authz and ratelimit port as an
endpoint of the generated clusters, so Envoy, which keeps one connection per endpoint,
spreads its Checks over both workers. Decisions and the per-user quota (100 a minute,
counted inside the Check on the parent's counters) are those of one process.
"""

import json

import pytest

from services.xds.build import AUTHZ_CLUSTER, RATELIMIT_CLUSTER
from tests.e2e.conftest import Launcher
from tests.e2e.gateway_stack import GatewayStack, bearer, start_stack
from tests.envoy_proc import Upstream, wait_for_fresh_window
from tests.quota_load import metric

WORKERS = 2
LIMIT = 100  # gateway_stack.QUOTA


@pytest.fixture(scope="module", name="stack")
def fixture_stack(module_launcher: Launcher, upstream: Upstream) -> GatewayStack:
    return start_stack(module_launcher, upstream, mixerless_extra=("--workers", str(WORKERS)))


def endpoints(stack: GatewayStack, cluster: str) -> list[int]:
    """The ports of ``cluster``'s hosts, as Envoy's admin ``/clusters`` shows them."""
    clusters = json.loads(stack.envoy.admin("/clusters?format=json"))["cluster_statuses"]
    [found] = [c for c in clusters if c["name"] == cluster]
    return sorted(h["address"]["socket_address"]["port_value"] for h in found["host_statuses"])


def worker_checks(stack: GatewayStack, index: int) -> float:
    """Checks worker ``index`` answered, from its own ``/metrics``."""
    return metric(stack.mixerless.worker_ports(index)[2], "mixerless_rpc_requests", service="authz")


@pytest.mark.envoy
class TestGatewayOverWorkers:
    def test_the_generated_clusters_have_one_endpoint_per_worker(self, stack: GatewayStack) -> None:
        """mixerless_authz and mixerless_ratelimit each list both workers' own ports."""
        own = [stack.mixerless.worker_ports(i) for i in range(WORKERS)]
        assert endpoints(stack, AUTHZ_CLUSTER) == sorted(p[0] for p in own)
        assert endpoints(stack, RATELIMIT_CLUSTER) == sorted(p[1] for p in own)

    def test_decisions_are_those_of_one_process_and_spread_over_both(
        self, stack: GatewayStack
    ) -> None:
        """A valid token passes, none is 403, an expired one 401; both workers decided."""
        before = [worker_checks(stack, i) for i in range(WORKERS)]
        statuses = [stack.request("/api/orders", bearer("alice")).status for _ in range(6)]
        assert statuses == [200] * 6
        assert stack.request("/api/orders").status == 403
        assert stack.request("/api/orders", bearer("expired")).status == 401
        after = [worker_checks(stack, i) for i in range(WORKERS)]
        assert sum(after) - sum(before) == 8
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

    def test_the_quota_is_one_quota_across_workers(self, stack: GatewayStack) -> None:
        """bob's 100 /product calls a minute pass, wherever they are decided; the 101st
        is 429 from the rate limit filter's answer."""
        wait_for_fresh_window(60, at_least=10)
        replies = [stack.request("/product/1", bearer("bob")) for _ in range(LIMIT + 1)]
        assert [r.status for r in replies] == [200] * LIMIT + [429], replies[-1]
        assert [r.headers["x-ratelimit-remaining"] for r in replies[:3]] == ["99", "98", "97"]
        assert replies[-1].headers["x-envoy-ratelimited"] == "true"
