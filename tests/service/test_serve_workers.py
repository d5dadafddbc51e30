"""``mixerless serve --workers 2`` as a real process tree on 127.0.0.1, without Redis.

The parent runs xds and the HTTP port and owns the counters; each worker answers authz
and rate limit calls on the public ports (shared, ``SO_REUSEPORT``) and on its own. The
module's tree serves the tests that leave it as they found it; the two about stopping
start trees of their own. Every process is stopped by pid (``MixerlessProcess.stop``
SIGKILLs any worker left once its parent is gone).
"""

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import envoy_api as api
from tests.conformance.harness import check_request
from tests.envoy_proc import (
    MixerlessProcess,
    http_request,
    is_worker_process,
    start_mixerless,
    wait_for_fresh_window,
    wait_until,
)
from tests.providers import HttpAuthzServer
from tests.quota_load import channel, metric
from tests.ratelimit_calls import POLICY, make_request, write_policy

WORKERS = 2
SOON = 20.0  # seconds a busy machine may need to start or stop Python processes: a bound
RPC = "mixerless_rpc_requests"


SLOW_PROVIDER = """\
apiVersion: mixerless.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  extensionProviders:
  - name: slow
    envoyExtAuthzHttp: {{service: 127.0.0.1, port: {port}, timeout: 10s}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: slow-custom
  namespace: istio-system
spec:
  action: CUSTOM
  provider: {{name: slow}}
  rules:
  - to:
    - operation:
        paths: ["/slow"]
"""


def serve(tmp_path_factory: pytest.TempPathFactory, name: str, **files: str) -> MixerlessProcess:
    """A tree of its own: the rate limit POLICY (plus ``files``, by name), authz allowing
    everything else, xds."""
    policies = tmp_path_factory.mktemp(f"{name}-policies")
    write_policy(policies, POLICY)
    for file_name, text in files.items():
        write_policy(policies, text, file_name)
    args = [
        "--policies",
        str(policies),
        "--reload-interval",
        "100ms",
        "--shutdown-grace",
        "2s",
    ]
    workdir: Path = tmp_path_factory.mktemp(f"{name}-mixerless")
    return start_mixerless(args, workdir=workdir, workers=WORKERS, timeout=60)


@pytest.fixture(scope="module", name="tree")
def fixture_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixerlessProcess]:
    process = serve(tmp_path_factory, "tree")
    try:
        yield process
    finally:
        process.stop()


def policies_of(tree: MixerlessProcess) -> Path:
    command = tree.process.args
    assert isinstance(command, list)
    return Path(command[command.index("--policies") + 1])


async def should_rate_limit(port: int, user: str, *, fresh: bool = False) -> api.RateLimitResponse:
    """One ShouldRateLimit for ``user`` in the POLICY's domain (``fresh``: on a new
    connection)."""
    target = channel(port) if fresh else grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    async with target as ch:
        stub = api.RateLimitServiceStub(ch)
        reply: api.RateLimitResponse = await stub.ShouldRateLimit(
            make_request("edge", [("user", user)]), timeout=10
        )
        return reply


async def check(port: int, path: str = "/x") -> int:
    """One Check; its gRPC status code (0: allowed)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await api.AuthorizationStub(ch).Check(check_request(path=path), timeout=10)
        return int(reply.status.code)


async def serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def worker_calls(tree: MixerlessProcess, index: int) -> float:
    """ShouldRateLimit calls worker ``index`` answered, from its own ``/metrics``."""
    return metric(tree.worker_ports(index)[2], RPC, service="ratelimit")


class TestWorkers:
    async def test_each_worker_answers_on_its_own_ports_and_the_public_ones(
        self, tree: MixerlessProcess
    ) -> None:
        """Both workers serve authz and ratelimit on their own ports (health SERVING), and
        fresh connections to the public port reach both of them."""
        for index in range(WORKERS):
            authz, ratelimit, _ = tree.worker_ports(index)
            assert await serving(authz) and await serving(ratelimit)
            assert await check(authz) == 0
            reply = await should_rate_limit(ratelimit, uuid4().hex)
            assert reply.statuses[0].limit_remaining == 2
        assert await check(tree.authz_port) == 0
        before = [worker_calls(tree, i) for i in range(WORKERS)]
        for _ in range(16):  # the kernel picks a worker per connection
            await should_rate_limit(tree.ratelimit_port, uuid4().hex, fresh=True)
        after = [worker_calls(tree, i) for i in range(WORKERS)]
        assert sum(after) - sum(before) == 16
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

    async def test_counters_are_shared_by_the_workers_and_json_on_the_parent(
        self, tree: MixerlessProcess
    ) -> None:
        """A user's 3 a minute: one call on each worker's port, then the parent's POST
        /json sees the last one, and the next is over the limit everywhere."""
        wait_for_fresh_window(60, at_least=5)
        user = uuid4().hex
        first = await should_rate_limit(tree.worker_ports(0)[1], user)
        second = await should_rate_limit(tree.worker_ports(1)[1], user)
        assert [first.statuses[0].limit_remaining, second.statuses[0].limit_remaining] == [2, 1]
        entries = [{"key": "user", "value": user}]
        body = json.dumps({"domain": "edge", "descriptors": [{"entries": entries}]})
        answers = [
            http_request(tree.http_port, "/json", method="POST", body=body.encode())
            for _ in range(2)
        ]
        assert [a.status for a in answers] == [200, 429]
        assert answers[0].json()["statuses"][0].get("limitRemaining", 0) == 0
        over = await should_rate_limit(tree.ratelimit_port, user)
        assert over.overall_code == api.RateLimitResponse.OVER_LIMIT

    async def test_metrics_on_the_parent_add_up_every_worker(self, tree: MixerlessProcess) -> None:
        """3 calls to worker 0 and 5 to worker 1: the parent's /metrics counts 8 more,
        and equals the workers' own counts summed; one policy digest, not three."""
        before = metric(tree.http_port, RPC, service="ratelimit")
        for index, calls in ((0, 3), (1, 5)):
            for _ in range(calls):
                await should_rate_limit(tree.worker_ports(index)[1], uuid4().hex)
        merged = metric(tree.http_port, RPC, service="ratelimit")
        assert merged - before == 8
        assert merged == worker_calls(tree, 0) + worker_calls(tree, 1)
        assert metric(tree.http_port, "mixerless_policy_info") == 1

    async def test_readyz_is_ready_only_while_every_worker_is(self, tree: MixerlessProcess) -> None:
        """A worker that stops answering (SIGSTOP) makes the parent's /readyz 503, naming
        it; once it answers again, the parent is ready again."""
        ready = tree.get("/readyz")
        assert ready.status == 200
        assert ready.json()["checks"] == {"policy": "ok", "workers": "ok"}
        pid = tree.worker_pids()[1]
        os.kill(pid, signal.SIGSTOP)
        try:
            assert wait_until(lambda: tree.get("/readyz").status == 503, timeout=SOON)
            reason = tree.get("/readyz").json()["checks"]["workers"]
            assert reason.startswith("failed: worker 1: unreachable"), reason
        finally:
            os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: tree.get("/readyz").status == 200, timeout=SOON)

    async def test_a_policy_change_reaches_every_worker(self, tree: MixerlessProcess) -> None:
        """Rewriting the policy: each worker (and the public port) answers with the new
        limit; written back, every one serves the old again."""
        policies = policies_of(tree)

        async def limits() -> set[int]:
            replies = [await should_rate_limit(p, uuid4().hex) for p in tree.ratelimit_ports()]
            return {r.statuses[0].current_limit.requests_per_unit for r in replies}

        async def settle(expected: set[int]) -> bool:
            async with asyncio.timeout(SOON):
                # Each worker reloads on its own: there is nothing to wait on but asking.
                while await limits() != expected:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            return True

        write_policy(policies, POLICY.replace("requests_per_unit: 3", "requests_per_unit: 7"))
        try:
            assert await settle({7})
        finally:
            write_policy(policies, POLICY)
        assert await settle({3})

    async def test_a_worker_that_dies_is_started_again(self, tree: MixerlessProcess) -> None:
        """SIGKILL a worker: the parent starts another, which serves its ports, and the
        parent is ready again."""
        old = tree.worker_pids()[0]
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: tree.worker_pids().get(0) not in (None, old), timeout=SOON)
        assert wait_until(lambda: tree.get("/readyz").status == 200, timeout=SOON)
        reply = await should_rate_limit(tree.worker_ports(0)[1], uuid4().hex)
        assert reply.overall_code == api.RateLimitResponse.OK


class TestStopping:
    async def test_sigterm_drains_every_worker_and_exits_0(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """SIGTERM to the parent while a Check waits on a slow provider: the Check is
        answered, every worker exits 0, then the parent, and no worker is left."""
        async with HttpAuthzServer(delay=1.0) as provider:
            slow = SLOW_PROVIDER.format(port=provider.port)
            tree = serve(tmp_path_factory, "sigterm", **{"slow.yaml": slow})
            try:
                pids = tree.worker_pids()
                in_flight = asyncio.create_task(check(tree.worker_ports(0)[0], "/slow"))
                async with asyncio.timeout(SOON):
                    while not provider.requests:  # noqa: ASYNC110 (another process asks)
                        await asyncio.sleep(0.01)
                tree.process.send_signal(signal.SIGTERM)
                assert await in_flight == 0  # allowed by the provider, after the SIGTERM
                code = await asyncio.to_thread(tree.process.wait, SOON)
            finally:
                tree.stop()
            assert code == 0, tree.describe()
            assert not any(is_worker_process(pid) for pid in pids.values())
            lines = tree.log().splitlines()
            stopped = [line for line in lines if "workers stopped" in line]
            assert len(stopped) == 1 and "exit_codes={0: 0, 1: 0}" in stopped[0], lines[-20:]
            for index in range(WORKERS):  # each worker was told, and drained
                assert any("shutting down" in x and f"worker={index}" in x for x in lines)

    def test_workers_stop_when_the_parent_is_killed(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """SIGKILL to the parent (nothing forwarded): each worker sees it and exits."""
        tree = serve(tmp_path_factory, "orphans")
        try:
            pids = tree.worker_pids()
            tree.process.kill()
            tree.process.wait()
            assert wait_until(
                lambda: not any(is_worker_process(pid) for pid in pids.values()), timeout=SOON
            ), tree.log()[-2000:]
            assert "the parent process exited; stopping" in tree.log()
        finally:
            tree.stop()
