"""Quotas counted inside Check, on a real Redis that goes away: each policy's onStoreFailure
decides the quota answer, and no authorization decision changes.

``mixerless serve --only authz --redis URL``: the authz service counts with a rate limit
service of its own over Redis (there is no rate limit port). The gateway ``edge`` has a
``strict`` route (its quota denies when Redis cannot count) and a ``lenient`` one (allows).
"""

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services import envoy_api as api
from services.grpc_server import ServerOptions
from services.ratelimit.redis_settings import RedisSettings
from services.serve import Application
from services.settings import Settings
from tests.redis_servers import RedisServer

POLICIES = """\
apiVersion: mixerless.io/v1alpha1
kind: Gateway
metadata: {name: edge, namespace: shop, labels: {app: edge}}
spec:
  listeners: [{name: http, port: 10000}]
  routes:
  - {name: strict, match: {prefix: /strict}, backend: {endpoints: ["127.0.0.1:9000"]}}
  - {name: lenient, match: {prefix: /lenient}, backend: {endpoints: ["127.0.0.1:9000"]}}
---
apiVersion: mixerless.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: strict-quota, namespace: shop}
spec:
  targetRef: {kind: Gateway, name: edge}
  routes: [strict]
  limit: {requests: 100, unit: minute}
  countBy: {clientAddress: {}}
---
apiVersion: mixerless.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: lenient-quota, namespace: shop}
spec:
  targetRef: {kind: Gateway, name: edge}
  routes: [lenient]
  limit: {requests: 100, unit: minute}
  countBy: {clientAddress: {}}
  onStoreFailure: allow
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: edge}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/strict/admin", "/lenient/admin"]}}]}]
"""


@pytest.fixture(name="authz")
async def fixture_authz(tmp_path: Path, private_redis: RedisServer) -> AsyncIterator[Any]:
    (tmp_path / "edge.yaml").write_text(POLICIES)
    settings = Settings(
        services=frozenset({"authz"}),
        policies=tmp_path,
        authz_port=0,
        http_port=0,
        redis=RedisSettings(private_redis.url, 4, 0.5, 0.5, 0),
        reload_interval=0.05,
        server=ServerOptions(host="127.0.0.1"),
    )
    app = Application(settings)
    await app.start()
    for _ in range(100):
        if app.state.current is not None:
            break
        await asyncio.sleep(0.05)
    assert app.authz is not None and app.ratelimit is None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.authz.port}")
    try:
        yield api.AuthorizationStub(channel), f"http://127.0.0.1:{app.http.port}/readyz"
    finally:
        await channel.close()
        await app.stop()


async def status_of(stub: Any, path: str) -> int:
    """The HTTP status Envoy would answer with, for a Check of ``path`` on its route."""
    request = api.CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "edge.example", path
    http.headers.update({":path": path, ":method": "GET", ":authority": "edge.example"})
    request.attributes.source.address.socket_address.address = "203.0.113.7"
    request.attributes.context_extensions.update(
        {"namespace": "shop", "gateway": "edge", "labels": "app=edge"}
    )
    request.attributes.context_extensions["route"] = path.split("/")[1]
    response = await stub.Check(request, timeout=5)
    return 200 if response.status.code == 0 else response.denied_response.status.code


@pytest.mark.redis
async def test_redis_outage_follows_each_policys_failure_mode_and_keeps_authz(
    authz: Any, private_redis: RedisServer
) -> None:
    """Redis down: strict 500, lenient 200, denied paths 403, still ready; back up: 200."""
    authz, readyz = authz
    paths = ("/strict/a", "/lenient/a", "/strict/admin", "/lenient/admin")
    assert [await status_of(authz, p) for p in paths] == [200, 200, 403, 403]
    private_redis.pause()  # stopped, not gone: every command times out
    try:
        assert [await status_of(authz, p) for p in paths] == [500, 200, 403, 403]
        ready = await asyncio.to_thread(lambda: urllib.request.urlopen(readyz, timeout=5).status)
        assert ready == 200  # authorization does not leave the Service with Redis
    finally:
        private_redis.resume()
    assert [await status_of(authz, p) for p in paths] == [200, 200, 403, 403]
