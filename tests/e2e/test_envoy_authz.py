"""Envoy's ext_authz filter asking ``mixerless serve``, with the repository's example policies.

Envoy runs ``ext_authz`` (gRPC to mixerless authz), then ``ratelimit`` keyed on the
verified JWT subject that authz returns as dynamic metadata, then the router to an
echo upstream. Tokens are the demo tokens in ``deploy/demo``; policies are
``policies/authz`` (JWT at the gateway, a token required on /api and /product,
/admin for staff only) plus a per-user quota on /product.
"""

from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from tests.e2e.conftest import Launcher
from tests.envoy_proc import (
    EnvoyProcess,
    HttpResponse,
    Upstream,
    free_port,
    http_listener_bootstrap,
    http_request,
    static_cluster,
    wait_for_fresh_window,
)

ROOT = Path(__file__).parent.parent.parent
DEMO = ROOT / "deploy" / "demo"
AUTHZ_CLUSTER = "mixerless_authz"
RLS_CLUSTER = "mixerless_rls"
QUOTA = """\
domain: gateway
descriptors:
  - key: generic_key
    value: product
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 3}
"""


def token(name: str) -> str:
    return (DEMO / f"{name}.jwt").read_text().strip()


def envoy_config(*, listen: int, admin: int, upstream: int, authz: int, rls: int) -> str:
    subject = {
        "metadata": {
            "descriptor_key": "user",
            "metadata_key": {"key": "envoy.filters.http.ext_authz", "path": [{"key": "subject"}]},
            "source": "DYNAMIC",
        }
    }
    routes = [
        {
            "match": {"prefix": "/product"},
            "route": {
                "cluster": "upstream",
                "rate_limits": [
                    {"actions": [{"generic_key": {"descriptor_value": "product"}}, subject]}
                ],
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
    ]
    filters = [
        {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "failure_mode_allow": False,
                "grpc_service": {"envoy_grpc": {"cluster_name": AUTHZ_CLUSTER}, "timeout": "2s"},
            },
        },
        {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "gateway",
                "failure_mode_deny": True,
                "timeout": "1s",
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limit_service": {
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
                },
            },
        },
    ]
    return http_listener_bootstrap(
        name="gateway",
        listen_port=listen,
        admin_port=admin,
        routes=routes,
        http_filters=filters,
        clusters=[
            static_cluster("upstream", upstream),
            static_cluster(AUTHZ_CLUSTER, authz, http2=True),
            static_cluster(RLS_CLUSTER, rls, http2=True),
        ],
    )


@dataclass
class Gateway:
    envoy: EnvoyProcess
    port: int
    upstream: Upstream

    def get(self, path: str, **headers: str) -> HttpResponse:
        return http_request(
            self.port, path, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )


@pytest.fixture(scope="module", name="gateway")
def fixture_gateway(module_launcher: Launcher, upstream: Upstream) -> Gateway:
    policies = module_launcher.policy_dir(
        {
            "authz/gateway-jwt.yaml": (ROOT / "policies/authz/gateway-jwt.yaml").read_text(),
            "authz/gateway-access.yaml": (ROOT / "policies/authz/gateway-access.yaml").read_text(),
            "quota.yaml": QUOTA,
        }
    )
    mixerless = module_launcher.mixerless(["--policies", str(policies)])
    listen, admin = free_port(), free_port()
    config = envoy_config(
        listen=listen,
        admin=admin,
        upstream=upstream.port,
        authz=mixerless.authz_port,
        rls=mixerless.ratelimit_port,
    )
    return Gateway(module_launcher.envoy(config, admin_port=admin), listen, upstream)


@pytest.mark.envoy
class TestEnvoyAuthz:
    def test_valid_token_passes_with_identity_upstream(self, gateway: Gateway) -> None:
        """A valid JWT gets 200; upstream sees x-user-id from the token and no Authorization."""
        marker = uuid4().hex
        reply = gateway.get(
            "/api/orders",
            authorization=f"Bearer {token('alice')}",
            x_user_id="mallory",
            x_test=marker,
        )
        assert reply.status == 200
        [seen] = [r for r in gateway.upstream.requests() if r.headers.get("x-test") == marker]
        assert seen.headers["x-user-id"] == "alice"
        assert "authorization" not in seen.headers

    def test_expired_token_is_401_with_challenge(self, gateway: Gateway) -> None:
        """An expired JWT gets Envoy jwt_authn's 401: body and www-authenticate header."""
        reply = gateway.get("/api/orders", authorization=f"Bearer {token('expired')}")
        assert reply.status == 401
        assert reply.text() == "Jwt is expired"
        assert reply.headers["www-authenticate"].startswith('Bearer realm="http://')
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]

    def test_wrong_audience_is_403(self, gateway: Gateway) -> None:
        """A JWT for another audience gets 403 'Audiences in Jwt are not allowed'."""
        reply = gateway.get("/api/orders", authorization=f"Bearer {token('wrong-audience')}")
        assert (reply.status, reply.text()) == (403, "Audiences in Jwt are not allowed")

    def test_missing_token_is_403_where_required(self, gateway: Gateway) -> None:
        """No token: 403 RBAC on /api (a principal is required), 200 elsewhere."""
        assert (gateway.get("/api/orders").status, gateway.get("/api/orders").text()) == (
            403,
            "RBAC: access denied",
        )
        assert gateway.get("/public").status == 200

    def test_forged_identity_header_is_removed(self, gateway: Gateway) -> None:
        """Without a token, a client's own x-user-id never reaches the upstream."""
        marker = uuid4().hex
        assert gateway.get("/public", x_user_id="alice", x_test=marker).status == 200
        [seen] = [r for r in gateway.upstream.requests() if r.headers.get("x-test") == marker]
        assert "x-user-id" not in seen.headers

    def test_claim_based_admin_access(self, gateway: Gateway) -> None:
        """/admin allows a token whose groups claim holds staff, and denies others."""
        assert gateway.get("/admin/x", authorization=f"Bearer {token('bob')}").status == 200
        assert gateway.get("/admin/x", authorization=f"Bearer {token('alice')}").status == 403

    def test_quota_keyed_on_verified_subject(self, gateway: Gateway) -> None:
        """/product counts per verified subject (dynamic metadata), not a forgeable header."""
        wait_for_fresh_window(60, at_least=3.0)
        alice = [
            gateway.get(
                f"/product/{i}", authorization=f"Bearer {token('alice')}", x_user_id=uuid4().hex
            )
            for i in range(4)
        ]
        assert [r.status for r in alice] == [200, 200, 200, 429]
        assert alice[3].headers["x-ratelimit-limit"].startswith("3, 3;w=60")
        bob = gateway.get("/product/1", authorization=f"Bearer {token('bob')}")
        assert bob.status == 200
