"""``mixerless serve --workers 2 --redis ...``: the workers count through Redis, as replicas.

A real process tree on 127.0.0.1 and a real redis-server. With Redis there is no parent
counter socket: each worker counts exactly in Redis (one round trip per call) or from
Redis leases sized for every process (``--lease-processes`` x workers). One user's
quota of ``LIMIT`` an hour is hammered with twice as many calls over the public port
and both workers' own ports.
"""

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests.envoy_proc import (
    MixerlessProcess,
    http_request,
    start_mixerless,
    wait_for_fresh_window,
)
from tests.quota_load import hammer
from tests.ratelimit_calls import make_request, write_policy
from tests.redis_servers import RedisServer

WORKERS = 2
LIMIT = 200
STRANDED = LIMIT // 2 + WORKERS  # the bound on units still held (k = 2, P = workers)

POLICY = f"""\
domain: quota
descriptors:
  - key: exact
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
  - key: leased
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, counting: leased}}
"""


@pytest.fixture(name="tree")
def fixture_tree(tmp_path: Path, redis_server: RedisServer) -> Iterator[MixerlessProcess]:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies, POLICY)
    args = ["--policies", str(policies), "--only", "ratelimit", "--redis", redis_server.url]
    process = start_mixerless(args, workdir=tmp_path / "mixerless", workers=WORKERS, timeout=60)
    try:
        yield process
    finally:
        process.stop()


def counter(redis_server: RedisServer, user: str) -> int:
    """The value of the one Redis counter whose key names ``user``."""
    with redis_server.client() as client:
        keys = [k for k in client.keys("*") if user.encode() in k]
        assert len(keys) == 1, keys
        return int(client.get(keys[0]) or 0)


@pytest.mark.redis
class TestWorkersOverRedis:
    def test_no_parent_counters_with_redis(self, tree: MixerlessProcess) -> None:
        """The parent serves no counter socket and tells its workers of none."""
        assert tree.get("/debug/config").json()["workers"]["counters"] == "redis"
        for pid in tree.worker_pids().values():
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--lease-socket" not in command and b"--redis" in command
        assert tree.get("/readyz").json()["checks"] == {"policy": "ok", "workers": "ok"}
        for index in range(WORKERS):  # each worker's readiness follows Redis
            answer = http_request(tree.worker_ports(index)[2], "/readyz").json()
            assert answer["checks"] == {"policy": "ok", "redis": "ok"}

    async def test_an_exact_limit_admits_exactly_the_limit(
        self, tree: MixerlessProcess, redis_server: RedisServer
    ) -> None:
        """Twice the quota over every port: exactly LIMIT pass; Redis counted every call."""
        wait_for_fresh_window(3600, at_least=60)
        user = uuid4().hex
        tally = await hammer(
            tree.ratelimit_ports(), make_request("quota", [("exact", user)]), 2 * LIMIT
        )
        assert tally.failed == []
        assert (tally.total_admitted, tally.total_refused) == (LIMIT, LIMIT)
        assert counter(redis_server, user) == 2 * LIMIT

    async def test_a_leased_limit_never_admits_more_than_the_limit(
        self, tree: MixerlessProcess, redis_server: RedisServer
    ) -> None:
        """Twice the quota, leased from Redis by both workers: at most LIMIT pass, at
        least LIMIT less what they may hold, and Redis never counts past LIMIT."""
        wait_for_fresh_window(3600, at_least=60)
        user = uuid4().hex
        tally = await hammer(
            tree.ratelimit_ports(), make_request("quota", [("leased", user)]), 2 * LIMIT
        )
        assert tally.failed == []
        assert LIMIT - STRANDED <= tally.total_admitted <= LIMIT
        assert tally.total_admitted <= counter(redis_server, user) <= LIMIT
