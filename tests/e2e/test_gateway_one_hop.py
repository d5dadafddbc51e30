"""One hop through a real Envoy: a RateLimitPolicy's quota is counted inside the Check.

The gateway stack's ``products`` route has the per-user quota of ``QUOTA`` (100 a minute,
counted by the verified subject). Envoy gets no rate limit actions for it, so its
ratelimit filter asks nobody; the Check counts in the rate limit service's store, under
the descriptor the actions would have sent, and answers as the filter would.
"""

import grpc
import pytest

from services import envoy_api as api
from tests.e2e.conftest import Launcher
from tests.e2e.gateway_stack import GATEWAY, QUOTA_KEY, GatewayStack, bearer, start_stack
from tests.envoy_proc import Upstream, wait_for_fresh_window
from tests.ratelimit_calls import make_request

LIMIT = 100


@pytest.fixture(name="stack")
def fixture_stack(launcher: Launcher, upstream: Upstream) -> GatewayStack:
    """A stack of its own per test: every test starts with unused counters."""
    stack = start_stack(launcher, upstream)
    wait_for_fresh_window(60, at_least=8)
    return stack


def ask_rls(stack: GatewayStack, user: str) -> api.RateLimitResponse:
    """ShouldRateLimit, as Envoy's ratelimit filter sends it for the products route."""
    request = make_request(GATEWAY, [("policy", QUOTA_KEY), ("match", "yes"), ("user", user)])
    with grpc.insecure_channel(f"127.0.0.1:{stack.mixerless.ratelimit_port}") as channel:
        return api.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=5)


def rls_calls(stack: GatewayStack) -> int:
    """ShouldRateLimit calls Envoy's ratelimit filter made, on any route."""
    counters = stack.envoy.stats(r"\.ratelimit\.")
    return sum(v for k, v in counters.items() if k.endswith((".ok", ".over_limit", ".error")))


@pytest.mark.envoy
class TestQuotaInsideCheck:
    def test_over_quota_is_429_with_the_filters_headers_and_no_rls_call(
        self, stack: GatewayStack
    ) -> None:
        """100 calls pass with x-ratelimit-* headers, the 101st is 429 + x-envoy-ratelimited."""
        replies = [stack.request("/product/1", bearer("alice")) for _ in range(LIMIT + 1)]
        assert [r.status for r in replies] == [200] * LIMIT + [429], replies[-1]
        first, last = replies[0].headers, replies[-1].headers
        assert first["x-ratelimit-limit"] == f"{LIMIT}, {LIMIT};w=60"
        assert first["x-ratelimit-remaining"] == str(LIMIT - 1)
        assert 0 < int(first["x-ratelimit-reset"]) <= 60
        assert last["x-envoy-ratelimited"] == "true"
        assert last["x-ratelimit-remaining"] == "0"
        assert rls_calls(stack) == 0

    def test_a_denied_request_consumes_no_quota(self, stack: GatewayStack) -> None:
        """403s (no token) and 401s (expired token) are decided first and are not counted."""
        assert {stack.request("/product/1").status for _ in range(3)} == {403}
        assert {stack.request("/product/1", bearer("expired")).status for _ in range(3)} == {401}
        reply = stack.request("/product/1", bearer("alice"))
        assert reply.status == 200
        assert reply.headers["x-ratelimit-remaining"] == str(LIMIT - 1)

    def test_one_hop_and_shouldratelimit_count_the_same_counter(self, stack: GatewayStack) -> None:
        """Three ShouldRateLimit calls for alice, then her Check through Envoy sees 96 left."""
        assert [ask_rls(stack, "alice").statuses[0].limit_remaining for _ in range(3)] == [
            99,
            98,
            97,
        ]
        reply = stack.request("/product/1", bearer("alice"))
        assert reply.headers["x-ratelimit-remaining"] == "96"
        assert ask_rls(stack, "alice").statuses[0].limit_remaining == 95

    def test_other_routes_and_users_are_not_counted(self, stack: GatewayStack) -> None:
        """Alice's /api calls carry no quota; bob's /product count is his own."""
        assert "x-ratelimit-limit" not in stack.request("/api/orders", bearer("alice")).headers
        stack.request("/product/1", bearer("alice"))
        reply = stack.request("/product/1", bearer("bob"))
        assert reply.headers["x-ratelimit-remaining"] == str(LIMIT - 1)
