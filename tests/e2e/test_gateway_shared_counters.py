"""Two ``mixerless serve --only ratelimit`` processes on one Redis keep one counter per user.

The descriptor is the one Envoy sends for the gateway's RateLimitPolicy (its route actions
in ``services/xds/ratelimit_policy.py``): the policy's generic_key, the match entry and the
verified subject, in the gateway's domain. The limits come from the same policy directory
the gateway stack uses, so this is the counter a fleet of gateways shares.
"""

from collections.abc import Iterator
from uuid import uuid4

import grpc
import pytest

from services import envoy_api as api
from tests.e2e.conftest import Launcher
from tests.e2e.gateway_stack import GATEWAY, QUOTA_KEY, policy_files
from tests.envoy_proc import MixerlessProcess, free_port, wait_for_fresh_window
from tests.ratelimit_calls import make_request
from tests.redis_servers import RedisServer, start_redis


@pytest.fixture(name="redis_server")
def fixture_redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


def ask(process: MixerlessProcess, user: str) -> api.RateLimitResponse:
    """One ShouldRateLimit call, on a channel of its own, for ``user``'s /product quota."""
    request = make_request(GATEWAY, [("policy", QUOTA_KEY), ("match", "yes"), ("user", user)])
    with grpc.insecure_channel(f"127.0.0.1:{process.ratelimit_port}") as channel:
        stub = api.RateLimitServiceStub(channel)
        return stub.ShouldRateLimit(request, timeout=5)


@pytest.mark.envoy
@pytest.mark.redis
class TestCountersSharedThroughRedis:
    def test_two_processes_count_one_user_once(
        self, launcher: Launcher, redis_server: RedisServer
    ) -> None:
        """Alternating between two processes, alice's remaining quota goes 99, 98, 97."""
        policies = launcher.policy_dir(
            policy_files(
                node=f"e2e-{uuid4().hex[:12]}",
                listen_port=free_port(),
                upstream_port=free_port(),
                provider_port=None,
            )
        )
        args = ["--policies", str(policies), "--only", "ratelimit", "--redis", redis_server.url]
        first, second = launcher.mixerless(args), launcher.mixerless(args)
        wait_for_fresh_window(60, at_least=5)
        replies = [ask(process, "alice") for process in (first, second, first)]
        assert [r.overall_code for r in replies] == [api.RateLimitResponse.OK] * 3
        assert [[s.limit_remaining for s in r.statuses] for r in replies] == [[99], [98], [97]]
        limit = replies[0].statuses[0].current_limit
        assert (limit.requests_per_unit, limit.unit) == (
            100,
            api.RateLimitResponse.RateLimit.MINUTE,
        )
        assert [s.limit_remaining for s in ask(second, "bob").statuses] == [99]
