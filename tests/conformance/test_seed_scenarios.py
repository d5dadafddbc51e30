"""The three scenarios the policy layer was built for, end to end through the gRPC API.

1. JWT required at the gateway: a RequestAuthentication alone lets anonymous requests
   through (§2.1, §4); once an ALLOW policy requires a principal, a valid token is 200, a
   bad one 401 and none 403.
2. An IP allowlist on ``remoteIpBlocks`` behind one trusted proxy (§1.4 XFF rules).
3. A CUSTOM provider consulted only for the paths its policy names (§1.9).
"""

from collections.abc import AsyncIterator

import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    RBAC_DENIED,
    Case,
    allow,
    bearer,
    custom,
    jwt_rule,
    mesh_config,
    op,
    params,
    request_authentication,
    rule,
    src,
    yaml_docs,
)
from tests.jwt_issuer import ISSUER, NOW, claims, jwks, tampered, token
from tests.providers import GrpcAuthzServer, deny

GATEWAY_JWT = request_authentication(
    jwt_rule(
        ISSUER,
        jwks=jwks("rsa"),
        audiences=["api.example.com"],
        outputClaimToHeaders=[{"header": "x-user-id", "claim": "sub"}],
    ),
    name="gateway-jwt",
    selector={"istio": "ingressgateway"},
)
REQUIRE_JWT = allow(
    rule(from_=src(requestPrincipals=[f"{ISSUER}/*"])),
    name="require-jwt",
    selector={"istio": "ingressgateway"},
)
VALID = token()


def request(headers=None):
    return {"path": "/api/orders", "headers": dict(headers or {})}


JWT_CASES = [
    Case(
        "valid token: 200, subject upstream, token removed",
        yaml_docs(GATEWAY_JWT, REQUIRE_JWT),
        request({**bearer(VALID), "x-user-id": "admin"}),
        200,
        expect_upstream_headers={"x-user-id": "alice"},
        expect_removed=["authorization"],
        ref="§2.3",
    ),
    Case(
        "bad token: 401",
        yaml_docs(GATEWAY_JWT, REQUIRE_JWT),
        request(bearer(tampered(VALID))),
        401,
        expect_body="Jwt verification fails",
        expect_headers={
            "www-authenticate": 'Bearer realm="http://api.example.com/api/orders", '
            'error="invalid_token"'
        },
        ref="§0",
    ),
    Case(
        "expired token: 401",
        yaml_docs(GATEWAY_JWT, REQUIRE_JWT),
        request(bearer(token(claims(exp=int(NOW) - 3600)))),
        401,
        expect_body="Jwt is expired",
        ref="§0",
    ),
    Case(
        "token for another audience: 403",
        yaml_docs(GATEWAY_JWT, REQUIRE_JWT),
        request(bearer(token(claims(aud="billing.example.com")))),
        403,
        expect_body="Audiences in Jwt are not allowed",
        ref="§0",
    ),
    Case(
        "no token: 403",
        yaml_docs(GATEWAY_JWT, REQUIRE_JWT),
        request(),
        403,
        expect_body=RBAC_DENIED,
        ref="§2.1",
    ),
]


@pytest.mark.parametrize("case", params(JWT_CASES))
async def test_jwt_required_at_the_gateway(authz: Launcher, case: Case) -> None:
    """Scenario 1: with a principal required, valid 200, bad 401, none 403."""
    await authz.run(case)


async def test_anonymous_until_a_principal_is_required(authz: Launcher) -> None:
    """Scenario 1 as a rollout: RequestAuthentication alone admits anonymous requests;
    adding the ALLOW policy (a hot reload) turns them into 403, valid tokens stay 200."""
    server = await authz.start(yaml_docs(GATEWAY_JWT))
    assert (await server.outcome(**request())).status == 200
    assert (await server.outcome(**request(bearer("x.y.z")))).status == 401
    await server.load(yaml_docs(GATEWAY_JWT, REQUIRE_JWT))
    anonymous = await server.outcome(**request())
    assert (anonymous.status, anonymous.body) == (403, RBAC_DENIED)
    assert (await server.outcome(**request(bearer(VALID)))).status == 200


ONE_PROXY = mesh_config(num_trusted_proxies=1)
OFFICE = yaml_docs(
    allow(rule(from_=src(remoteIpBlocks=["203.0.113.0/24", "2001:db8:1::/48"])), name="office")
)
LB = "10.0.0.1"
IP_CASES = [
    Case(
        "office client behind the LB: 200",
        OFFICE,
        {"source_ip": LB, "xff": f"203.0.113.7,{LB}"},
        mesh=ONE_PROXY,
        ref="§1.4",
    ),
    Case(
        "office IPv6 client: 200",
        OFFICE,
        {"source_ip": LB, "xff": f"2001:db8:1::9,{LB}"},
        mesh=ONE_PROXY,
        ref="§1.4",
    ),
    Case(
        "outside client: 403",
        OFFICE,
        {"source_ip": LB, "xff": f"198.51.100.4,{LB}"},
        403,
        expect_body=RBAC_DENIED,
        mesh=ONE_PROXY,
        ref="§1.4",
    ),
    Case(
        "outside client spoofing an office XFF entry: 403",
        OFFICE,
        {"source_ip": LB, "xff": f"203.0.113.7, 198.51.100.4,{LB}"},
        403,
        mesh=ONE_PROXY,
        ref="§4 only the N-th address from the right is trustworthy",
    ),
    Case(
        "request that bypassed the LB (no XFF beyond the peer): 403",
        OFFICE,
        {"source_ip": "198.51.100.4", "xff": "198.51.100.4"},
        403,
        mesh=ONE_PROXY,
        ref="§1.4 too few entries -> the peer",
    ),
]


@pytest.mark.parametrize("case", params(IP_CASES))
async def test_ip_allowlist_behind_one_proxy(authz: Launcher, case: Case) -> None:
    """Scenario 2: remoteIpBlocks sees the client the trusted LB saw, never a spoofed one."""
    await authz.run(case)


@pytest.fixture(name="provider")
async def fixture_provider() -> AsyncIterator[GrpcAuthzServer]:
    async with GrpcAuthzServer() as server:
        yield server


@pytest.mark.parametrize(
    ("path", "asked", "status"),
    [
        pytest.param("/admin/users", 1, 403, id="named path: provider asked, its deny stands"),
        pytest.param("/admin", 1, 403, id="named exact path: provider asked"),
        pytest.param("/public/page", 0, 200, id="other path: provider not asked"),
        pytest.param("/administrator", 0, 200, id="similar path: provider not asked"),
        pytest.param("/public/../admin/x", 1, 403, id="path normalized into the rule: asked"),
    ],
)
async def test_custom_provider_only_for_its_paths(
    authz: Launcher, provider: GrpcAuthzServer, path: str, asked: int, status: int
) -> None:
    """Scenario 3: the provider is consulted exactly for the paths its CUSTOM policy names."""
    provider.reply = deny(403, "ask an admin")
    mesh = mesh_config(
        providers=[
            {
                "name": "admin-authz",
                "envoyExtAuthzGrpc": {"service": "127.0.0.1", "port": provider.port},
            }
        ]
    )
    policy = yaml_docs(custom("admin-authz", rule(to=op(paths=["/admin", "/admin/*"]))))
    server = await authz.start(policy, mesh)
    outcome = await server.outcome(path=path)
    assert (outcome.status, len(provider.requests)) == (status, asked)
    if asked:
        assert outcome.body == "ask an admin"
        assert provider.requests[0].attributes.request.http.host == "api.example.com"
