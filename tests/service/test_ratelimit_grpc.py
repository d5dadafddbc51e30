"""ShouldRateLimit through a real gRPC server: answers, status codes, health, reflection."""

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services import envoy_api as api
from services.inline import require_loop
from services.ratelimit.service import RateLimitOptions
from services.ratelimit.store import Hit
from tests.hostile_bodies import rate_limit_bodies
from tests.ratelimit_calls import POLICY, make_request, write_policy
from tests.service.conftest import Running

OK = api.RateLimitResponse.OK
OVER = api.RateLimitResponse.OVER_LIMIT


async def wait_serving(running: Running) -> None:
    stub = health_pb2_grpc.HealthStub(running.channel)
    for _ in range(100):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=api.RATELIMIT_SERVICE_NAME))
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never SERVING")


class TestAnswers:
    async def test_ok_then_over_limit(self, start_app: Callable[..., Any]) -> None:
        """The 4th call of a user on a 3/minute limit is OVER_LIMIT; fields for X-RateLimit-*."""
        running = await start_app()
        await wait_serving(running)
        request = make_request("edge", [("user", "alice")])
        replies = [await running.stub.ShouldRateLimit(request) for _ in range(4)]
        assert [r.overall_code for r in replies] == [OK, OK, OK, OVER]
        assert [r.statuses[0].limit_remaining for r in replies] == [2, 1, 0, 0]
        status = replies[0].statuses[0]
        assert status.current_limit.requests_per_unit == 3
        assert status.current_limit.unit == api.RateLimitResponse.RateLimit.MINUTE
        assert 1 <= status.duration_until_reset.seconds <= 60
        other = await running.stub.ShouldRateLimit(make_request("edge", [("user", "bob")]))
        assert other.overall_code == OK

    async def test_response_headers_when_enabled(self, start_app: Callable[..., Any]) -> None:
        """With response headers on, RateLimit-Limit/-Remaining/-Reset are returned."""
        running = await start_app(options=RateLimitOptions(response_headers=True))
        await wait_serving(running)
        reply = await running.stub.ShouldRateLimit(make_request("edge", [("user", "h")]))
        headers = {h.key: h.value for h in reply.response_headers_to_add}
        assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Remaining"] == "2"
        assert 1 <= int(headers["RateLimit-Reset"]) <= 60

    async def test_dynamic_metadata_when_enabled(self, start_app: Callable[..., Any]) -> None:
        """With dynamic metadata on, the response carries the domain and descriptors."""
        running = await start_app(options=RateLimitOptions(dynamic_metadata=True))
        await wait_serving(running)
        reply = await running.stub.ShouldRateLimit(make_request("edge", [("user", "m")]))
        assert reply.dynamic_metadata["domain"] == "edge"
        assert list(reply.dynamic_metadata["descriptors"][0]["entries"]) == ["user=m"]


class TestErrors:
    @pytest.mark.parametrize(
        ("request_", "message"),
        [
            (make_request("", [("user", "a")]), "rate limit domain must not be empty"),
            (make_request("edge"), "rate limit descriptor list must not be empty"),
        ],
    )
    async def test_invalid_argument(
        self, start_app: Callable[..., Any], request_: Any, message: str
    ) -> None:
        """Empty domains and descriptor lists are INVALID_ARGUMENT with a clear message."""
        running = await start_app()
        await wait_serving(running)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.stub.ShouldRateLimit(request_)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == message

    async def test_unknown_override_unit(self, start_app: Callable[..., Any]) -> None:
        """A limit override with an unknown unit is INVALID_ARGUMENT."""
        running = await start_app()
        await wait_serving(running)
        request = make_request("edge", [("user", "a")])
        request.descriptors[0].limit.requests_per_unit = 5  # type: ignore[attr-defined]
        request.descriptors[0].limit.unit = 99  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.stub.ShouldRateLimit(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_huge_hits_addend_is_invalid(self, start_app: Callable[..., Any]) -> None:
        """A per-descriptor hits_addend beyond 2^32-1 is INVALID_ARGUMENT, never sent on."""
        running = await start_app()
        await wait_serving(running)
        request = make_request("edge", [("user", "a")])
        request.descriptors[0].hits_addend.value = 2**63
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.stub.ShouldRateLimit(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hits_addend" in (info.value.details() or "")

    @pytest.mark.parametrize("kind", list(rate_limit_bodies()))
    async def test_undecodable_bodies_do_not_hurt_the_server(
        self, start_app: Callable[..., Any], kind: str
    ) -> None:
        """Garbage, invalid UTF-8 and a truncated message are INVALID_ARGUMENT for that
        call only; the next one works."""
        running = await start_app()
        await wait_serving(running)
        raw = running.channel.unary_unary(
            f"/{api.RATELIMIT_SERVICE_NAME}/ShouldRateLimit",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(rate_limit_bodies()[kind])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "the body is not a RateLimitRequest"
        reply = await running.stub.ShouldRateLimit(make_request("edge", [("user", "z")]))
        assert reply.overall_code == OK

    async def test_concurrent_calls_count_exactly(
        self, start_app: Callable[..., Any], policies: Path
    ) -> None:
        """Calls spread over the server's handler threads never lose or double a count."""
        limit = "{key: user, rate_limit: {unit: hour, requests_per_unit: 200}}"
        limit = f"domain: edge\ndescriptors: [{limit}]\n"
        write_policy(policies, limit)
        running = await start_app()
        await wait_serving(running)
        replies = await asyncio.gather(
            *(
                running.stub.ShouldRateLimit(make_request("edge", [("user", "u")]))
                for _ in range(300)
            )
        )
        assert sum(reply.overall_code == OK for reply in replies) == 200

    async def test_store_failure_is_unavailable(self, start_app: Callable[..., Any]) -> None:
        """A failing counter store answers UNAVAILABLE, so Envoy's failure mode decides."""

        class DownStore:
            name = "redis"

            async def increment(self, hits: Sequence[Hit]) -> list[int]:
                from services.ratelimit.store import CounterStoreError

                raise CounterStoreError("timed out after 0.5s")

            async def ping(self) -> None:
                return None

            async def close(self) -> None:
                return None

        running = await start_app(store=DownStore())
        await wait_serving(running)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.stub.ShouldRateLimit(make_request("edge", [("user", "a")]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "redis counter store failed: timed out" in (info.value.details() or "")


class TestLifecycle:
    async def test_not_serving_until_policies_load(
        self, start_app: Callable[..., Any], policies: Path
    ) -> None:
        """Without a loadable policy set, health is NOT_SERVING and calls are UNAVAILABLE."""
        write_policy(policies, "domain: edge\ndescriptors: [{key: k, rate_limit: {unit: x}}]\n")
        running = await start_app()
        await asyncio.sleep(0.2)
        stub = health_pb2_grpc.HealthStub(running.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.stub.ShouldRateLimit(make_request("edge", [("user", "a")]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "no rate limit configuration loaded"
        write_policy(policies, POLICY)
        await wait_serving(running)
        reply = await running.stub.ShouldRateLimit(make_request("edge", [("user", "a")]))
        assert reply.overall_code == OK

    async def test_reflection_lists_the_service(self, start_app: Callable[..., Any]) -> None:
        """Server reflection lists the RLS and health services."""
        running = await start_app()
        stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            break
        assert api.RATELIMIT_SERVICE_NAME in names and "grpc.health.v1.Health" in names

    async def test_in_flight_calls_finish_on_shutdown(self, start_app: Callable[..., Any]) -> None:
        """Stopping the application lets a call already in progress complete."""
        release = asyncio.Event()

        class SlowStore:
            name = "slow"

            async def increment(self, hits: Sequence[Hit]) -> list[int]:
                require_loop("a slow store")  # the seams' contract (services/inline.py)
                await release.wait()
                return [1 for _ in hits]

            async def ping(self) -> None:
                return None

            async def close(self) -> None:
                return None

        running = await start_app(store=SlowStore())
        await wait_serving(running)
        call = asyncio.ensure_future(
            running.stub.ShouldRateLimit(make_request("edge", [("user", "a")]))
        )
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(running.app.stop())
        await asyncio.sleep(0.1)
        release.set()
        reply = await call
        await stopping
        assert reply.overall_code == OK


class TestHttpPort:
    async def test_ops_endpoints(self, start_app: Callable[..., Any]) -> None:
        """/healthz, /readyz (with digest), /metrics and /debug/config answer."""
        running = await start_app()
        await wait_serving(running)
        await running.stub.ShouldRateLimit(make_request("edge", [("user", "a")]))
        async with aiohttp.ClientSession(running.http_url) as http:
            for probe in ("/healthz", "/healthcheck"):
                async with http.get(probe) as reply:
                    assert reply.status == 200
            async with http.get("/readyz") as reply:
                body = await reply.json()
                assert reply.status == 200 and body["ready"] is True
                digest = body["policy_digest"]
                assert running.app.state.current is not None
                assert digest == running.app.state.current.digest
            async with http.get("/metrics") as reply:
                text = await reply.text()
                assert f'mixerless_policy_info{{digest="{digest}"}} 1.0' in text
                assert 'mixerless_rpc_requests_total{result="ok",service="ratelimit"} 1.0' in text
            async with http.get("/debug/config") as reply:
                body = await reply.json()
                assert body["digest"] == digest
                assert (
                    "edge.user: unit=MINUTE requests_per_unit=3, shadow_mode: false"
                    in (body["ratelimit"])
                )

    async def test_json_endpoint(self, start_app: Callable[..., Any]) -> None:
        """POST /json answers like envoyproxy/ratelimit's: 200 OK, 429 over, 400 bad input."""
        running = await start_app()
        await wait_serving(running)
        body = '{"domain": "edge", "descriptors": [{"entries": [{"key": "user", "value": "j"}]}]}'
        async with aiohttp.ClientSession(running.http_url) as http:
            codes = []
            for _ in range(4):
                async with http.post("/json", data=body) as reply:
                    codes.append(reply.status)
            assert codes == [200, 200, 200, 429]
            async with http.post("/json", data="{not json") as reply:
                assert reply.status == 400
            async with http.post("/json", data='{"domain": ""}') as reply:
                assert reply.status == 400
