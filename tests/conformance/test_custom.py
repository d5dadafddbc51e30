"""CUSTOM policies with real extension providers (reference §0, §1.2, §1.9, §1.10).

Each case runs against a real ``envoy.service.auth.v3`` gRPC provider and a real HTTP
provider from ``tests.providers`` (both on 127.0.0.1, programmed per case), plus a port
nothing listens on. The mesh config names them ``grpc-authz``, ``http-authz`` and ``dead``;
the provider entries below say ``port: "grpc"`` / ``"http"`` / ``"dead"`` and the test
fills in the real ports. Besides the answer, a case pins how often each provider was asked
and, where it matters, what the provider received.
"""

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    ABSENT,
    RBAC_DENIED,
    Case,
    allow,
    bearer,
    custom,
    deny,
    jwt_rule,
    mesh_config,
    op,
    request_authentication,
    rule,
    yaml_docs,
)
from tests.jwt_issuer import ISSUER, jwks
from tests.providers import (
    GrpcAuthzServer,
    GrpcFailure,
    HttpAuthzServer,
    HttpReply,
    unused_port,
)
from tests.providers import allow as grpc_allow
from tests.providers import deny as grpc_deny

GRPC = "grpc-authz"
HTTP = "http-authz"
DEAD = "dead"
ADMIN = op(paths=["/admin", "/admin/*"])


def grpc_provider(name: str = GRPC, port: str = "grpc", **fields: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzGrpc": {"service": "127.0.0.1", "port": port, **fields}}


def http_provider(name: str = HTTP, port: str = "http", **fields: Any) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzHttp": {"service": "127.0.0.1", "port": port, **fields}}


PROVIDERS = (grpc_provider(), http_provider(), grpc_provider(DEAD, "dead"))


@dataclass
class Providers:
    grpc: GrpcAuthzServer
    http: HttpAuthzServer
    dead_port: int

    def ports(self) -> dict[str, int]:
        return {"grpc": self.grpc.port, "http": self.http.port, "dead": self.dead_port}


Inspect = Callable[[Providers], None]


@dataclass(frozen=True)
class CustomCase:
    """A ``Case`` plus the providers' configuration and behaviour, and what they saw."""

    case: Case
    providers: Sequence[Mapping[str, Any]] = PROVIDERS
    grpc_reply: Any = None  # a CheckResponse or GrpcFailure; None = allow
    http_reply: HttpReply | None = None  # None = 200
    delay: float = 0.0  # both providers wait this long before answering
    grpc_calls: int | None = 0  # None: not pinned
    http_calls: int | None = 0
    inspect: Inspect | None = None

    def param(self) -> Any:
        return pytest.param(self, id=self.case.name)


def mesh_for(providers: Sequence[Mapping[str, Any]], ports: Mapping[str, int]) -> str:
    resolved = []
    for entry in providers:
        entry = dict(entry)
        for kind in ("envoyExtAuthzGrpc", "envoyExtAuthzHttp"):
            if kind in entry:
                settings = dict(entry[kind])
                settings["port"] = ports[settings["port"]]
                entry[kind] = settings
        resolved.append(entry)
    return mesh_config(providers=resolved)


def c(
    name: str,
    policy: str,
    request: Mapping[str, Any] | None = None,
    status: int = 200,
    *,
    ref: str = "§1.9",
    body: str | None = None,
    headers: Mapping[str, str | None] | None = None,
    upstream: Mapping[str, str | None] | None = None,
    **options: Any,
) -> CustomCase:
    return CustomCase(
        Case(
            name,
            policy,
            request or {},
            status,
            expect_body=body,
            expect_headers=headers or {},
            expect_upstream_headers=upstream or {},
            ref=ref,
        ),
        **options,
    )


def path(value: str, **more: Any) -> dict[str, Any]:
    return {"path": value, **more}


CUSTOM_ADMIN = custom(GRPC, rule(to=ADMIN))
HTTP_ADMIN = custom(HTTP, rule(to=ADMIN))


def seen_grpc_header(name: str, value: str | None) -> Inspect:
    def inspect(p: Providers) -> None:
        http = p.grpc.requests[-1].attributes.request.http
        assert http.headers.get(name) == value, dict(http.headers)

    return inspect


def seen_http(
    *, target: str | None = None, present: Mapping[str, str] | None = None, absent=()
) -> Inspect:
    def inspect(p: Providers) -> None:
        seen = p.http.requests[-1]
        if target is not None:
            assert seen.target == target
        for name, value in (present or {}).items():
            assert seen.header(name) == value, seen.headers
        for name in absent:
            assert seen.header(name) is None, seen.headers

    return inspect


def seen_grpc_body(body: str, partial: str) -> Inspect:
    def inspect(p: Providers) -> None:
        http = p.grpc.requests[-1].attributes.request.http
        assert http.body == body
        assert http.headers.get("x-envoy-auth-partial-body") == partial

    return inspect


SCOPE_CASES = [
    c(
        "provider asked for a path its policy names",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin/users"),
        grpc_calls=1,
        ref="§1.9 the provider is called only if the request matches a CUSTOM rule",
    ),
    c(
        "provider not asked for other paths",
        yaml_docs(CUSTOM_ADMIN),
        path("/public"),
        grpc_calls=0,
        ref="§1.9",
    ),
    c(
        "provider not asked when a normalized path escapes the rule",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin/../public"),
        grpc_calls=0,
        ref="§0 normalize before CUSTOM",
    ),
    c(
        "provider asked for a path that normalizes into the rule",
        yaml_docs(CUSTOM_ADMIN),
        path("/public/../admin/x"),
        grpc_calls=1,
        ref="§0 normalize before CUSTOM",
    ),
    c(
        "rules: [{}] sends every request",
        yaml_docs(custom(GRPC, {})),
        path("/anything"),
        grpc_calls=1,
        ref="§1.9 rules [{}] sends every request",
    ),
    c(
        "CUSTOM in another namespace does not apply",
        yaml_docs(custom(GRPC, {}, namespace="bar")),
        path("/admin"),
        grpc_calls=0,
        ref="§1.1",
    ),
    c(
        "CUSTOM selector not matching the workload",
        yaml_docs(custom(GRPC, {}, selector={"app": "other"})),
        path("/admin"),
        grpc_calls=0,
        ref="§1.1",
    ),
    c(
        "dry-run CUSTOM never calls the provider",
        yaml_docs(custom(GRPC, rule(to=ADMIN), dry_run="true")),
        path("/admin"),
        grpc_reply=grpc_deny(403, "no"),
        grpc_calls=0,
        ref="§1.10 dry-run CUSTOM: match-and-log, no provider call",
    ),
    c(
        "the HTTP provider, only for its paths",
        yaml_docs(HTTP_ADMIN),
        path("/public"),
        http_calls=0,
        ref="§1.9",
    ),
    c(
        "two providers on one workload: matching requests denied (Istio default)",
        yaml_docs(
            custom(GRPC, rule(to=ADMIN)),
            custom(HTTP, rule(to=op(paths=["/billing/*"]))),
        ),
        path("/billing/x"),
        403,
        grpc_calls=0,
        http_calls=0,
        ref="§1.9 more than one provider: rejected (CUSTOM rules become DENY) unless "
        "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS=true",
    ),
    c(
        "two providers on one workload: other requests pass",
        yaml_docs(
            custom(GRPC, rule(to=ADMIN)),
            custom(HTTP, rule(to=op(paths=["/billing/*"]))),
        ),
        path("/public"),
        ref="§1.9",
    ),
    c(
        "a path refused by normalization never reaches the provider",
        yaml_docs(custom(GRPC, {})),
        path("/admin%00"),
        400,
        ref="§0 normalize first; §1.6 %00 -> 400",
    ),
]

DECISION_CASES = [
    c(
        "provider allow, then a DENY still denies",
        yaml_docs(CUSTOM_ADMIN, deny(rule(to=ADMIN))),
        path("/admin"),
        403,
        body=RBAC_DENIED,
        grpc_calls=1,
        ref="§1.2 CUSTOM cannot override DENY",
    ),
    c(
        "provider allow, then an unmatched ALLOW denies",
        yaml_docs(CUSTOM_ADMIN, allow(rule(to=op(paths=["/public"])))),
        path("/admin"),
        403,
        body=RBAC_DENIED,
        grpc_calls=1,
        ref="§1.2 a request is allowed only if every stage allows it",
    ),
    c(
        "provider deny is final, even with an ALLOW-all",
        yaml_docs(CUSTOM_ADMIN, allow({})),
        path("/admin"),
        403,
        body="denied by provider",
        headers={"x-reason": "policy"},
        grpc_reply=grpc_deny(403, "denied by provider", [("x-reason", "policy")]),
        grpc_calls=1,
        ref="§1.2 its deny is final; §1.9 the provider's status and body go to the client",
    ),
    c(
        "provider deny status is passed through",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin"),
        401,
        body="log in first",
        headers={"www-authenticate": 'Bearer realm="x"'},
        grpc_reply=grpc_deny(401, "log in first", [("www-authenticate", 'Bearer realm="x"')]),
        grpc_calls=1,
        ref="§1.9 provider decision",
    ),
    c(
        "provider deny without a status is 403",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin"),
        403,
        grpc_reply=grpc_deny(),
        grpc_calls=1,
        ref="§1.9 gRPC default: 403",
    ),
    c(
        "provider allow: its headers go upstream and downstream",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin"),
        headers={"x-quota": "7"},
        upstream={"x-auth-user": "alice"},
        grpc_reply=grpc_allow([("x-auth-user", "alice")], response_headers=[("x-quota", "7")]),
        grpc_calls=1,
        ref="§1.9 allow",
    ),
    c(
        "CUSTOM runs before JWT: allow, then a bad token is 401",
        yaml_docs(request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))), custom(GRPC, {})),
        path("/admin", headers=bearer("not-a-jwt")),
        401,
        grpc_calls=1,
        ref="§0 filter order: CUSTOM, jwt_authn, RBAC",
    ),
    c(
        "CUSTOM runs before JWT: its deny wins over a bad token",
        yaml_docs(request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))), custom(GRPC, {})),
        path("/admin", headers=bearer("not-a-jwt")),
        403,
        body="provider says no",
        grpc_reply=grpc_deny(403, "provider says no"),
        grpc_calls=1,
        ref="§0 filter order",
    ),
    c(
        "unknown provider: matching requests are denied",
        yaml_docs(custom("nobody", rule(to=ADMIN))),
        path("/admin"),
        403,
        body=RBAC_DENIED,
        ref="§1.9 unknown provider -> CUSTOM rules become DENY rules",
    ),
    c(
        "unknown provider: other requests pass",
        yaml_docs(custom("nobody", rule(to=ADMIN))),
        path("/public"),
        ref="§1.9",
    ),
]

ERROR_CASES = [
    c(
        "unreachable provider fails closed",
        yaml_docs(custom(DEAD, {})),
        path("/admin"),
        403,
        ref="§1.9 communication error -> statusOnError (default 403)",
    ),
    c(
        "unreachable provider with failOpen",
        yaml_docs(custom(DEAD, {})),
        path("/admin"),
        providers=(grpc_provider(DEAD, "dead", failOpen=True),),
        ref="§1.9 failOpen",
    ),
    c(
        "unreachable provider with statusOnError",
        yaml_docs(custom(DEAD, {})),
        path("/admin"),
        503,
        providers=(grpc_provider(DEAD, "dead", statusOnError="503"),),
        ref="§1.9 statusOnError",
    ),
    c(
        "gRPC provider fails the call",
        yaml_docs(custom(GRPC, {})),
        path("/admin"),
        403,
        grpc_reply=GrpcFailure(grpc.StatusCode.INTERNAL, "boom"),
        grpc_calls=1,
        ref="§1.9 communication error",
    ),
    c(
        "gRPC provider timeout",
        yaml_docs(custom(GRPC, {})),
        path("/admin"),
        504,
        providers=(grpc_provider(timeout="0.1s", statusOnError="504"),),
        delay=0.4,
        grpc_calls=1,
        ref="§1.9 timeout -> statusOnError",
    ),
    c(
        "gRPC provider timeout with failOpen",
        yaml_docs(custom(GRPC, {})),
        path("/admin"),
        providers=(grpc_provider(timeout="0.1s", failOpen=True),),
        delay=0.4,
        grpc_calls=1,
        ref="§1.9 failOpen",
    ),
    c(
        "HTTP provider 5xx is an error",
        yaml_docs(custom(HTTP, {})),
        path("/admin"),
        403,
        http_reply=HttpReply(503, body=b"overloaded"),
        http_calls=1,
        ref="§1.9 provider 5xx (HTTP provider) -> error",
    ),
    c(
        "HTTP provider 5xx with failOpen",
        yaml_docs(custom(HTTP, {})),
        path("/admin"),
        providers=(http_provider(failOpen=True),),
        http_reply=HttpReply(500),
        http_calls=1,
        ref="§1.9",
    ),
    c(
        "HTTP provider timeout with statusOnError",
        yaml_docs(custom(HTTP, {})),
        path("/admin"),
        503,
        providers=(http_provider(timeout="0.1s", statusOnError="503"),),
        delay=0.4,
        http_calls=1,
        ref="§1.9",
    ),
    c(
        "unreachable HTTP provider fails closed",
        yaml_docs(custom(HTTP, {})),
        path("/admin"),
        403,
        providers=(http_provider(port="dead"),),
        ref="§1.9",
    ),
]

HTTP_CASES = [
    c(
        "HTTP provider allow; pathPrefix + original path and query",
        yaml_docs(HTTP_ADMIN),
        path("/admin/x?q=1"),
        providers=(http_provider(pathPrefix="/check"),),
        http_calls=1,
        inspect=seen_http(target="/check/admin/x?q=1"),
        ref="§1.9 pathPrefix",
    ),
    c(
        "HTTP provider gets the normalized path",
        yaml_docs(HTTP_ADMIN),
        path("/public/%2e%2e/admin/x?q=1"),
        providers=(http_provider(pathPrefix="/check"),),
        http_calls=1,
        inspect=seen_http(target="/check/admin/x?q=1"),
        ref="§1.6 normalization happens before any filter (ext_authz included)",
    ),
    c(
        "HTTP provider deny: status, body and every header but Host",
        yaml_docs(HTTP_ADMIN),
        path("/admin"),
        401,
        body="who are you",
        headers={"x-reason": "no session", "www-authenticate": "Basic"},
        http_reply=HttpReply(
            401, [("x-reason", "no session"), ("www-authenticate", "Basic")], b"who are you"
        ),
        http_calls=1,
        ref="§1.9 if headersToDownstreamOnDeny is empty, all provider headers except Host",
    ),
    c(
        "HTTP provider deny: headersToDownstreamOnDeny",
        yaml_docs(HTTP_ADMIN),
        path("/admin"),
        403,
        headers={"x-reason": "blocked", "x-debug": ABSENT},
        providers=(http_provider(headersToDownstreamOnDeny=["x-reason"]),),
        http_reply=HttpReply(403, [("x-reason", "blocked"), ("x-debug", "secret")]),
        http_calls=1,
        ref="§1.9 headersToDownstreamOnDeny",
    ),
    c(
        "HTTP provider: a 3xx is a denial",
        yaml_docs(HTTP_ADMIN),
        path("/admin"),
        302,
        headers={"location": "https://login.example.com/"},
        http_reply=HttpReply(302, [("location", "https://login.example.com/")]),
        http_calls=1,
        ref="§1.9 anything but 200 denies",
    ),
    c(
        "includeRequestHeadersInCheck",
        yaml_docs(HTTP_ADMIN),
        path("/admin", headers={"x-tenant": "acme", "x-secret": "s3cr3t"}),
        providers=(http_provider(includeRequestHeadersInCheck=["X-Tenant"]),),
        http_calls=1,
        inspect=seen_http(
            present={"x-tenant": "acme", "host": "api.example.com"}, absent=["x-secret"]
        ),
        ref="§1.9 includeRequestHeadersInCheck; Host, Method, Path always sent",
    ),
    c(
        "without includeRequestHeadersInCheck client headers stay home",
        yaml_docs(HTTP_ADMIN),
        path("/admin", headers={"x-tenant": "acme"}),
        http_calls=1,
        inspect=seen_http(absent=["x-tenant"]),
        ref="§1.9",
    ),
    c(
        "includeAdditionalHeadersInCheck overrides client headers",
        yaml_docs(HTTP_ADMIN),
        path("/admin", headers={"x-tenant": "evil"}),
        providers=(
            http_provider(
                includeRequestHeadersInCheck=["x-tenant"],
                includeAdditionalHeadersInCheck={"x-tenant": "acme", "x-static": "v1"},
            ),
        ),
        http_calls=1,
        inspect=seen_http(present={"x-tenant": "acme", "x-static": "v1"}),
        ref="§1.9 includeAdditionalHeadersInCheck",
    ),
    c(
        "headersToUpstreamOnAllow",
        yaml_docs(HTTP_ADMIN),
        path("/admin", headers={"x-user-id": "forged"}),
        upstream={"x-user-id": "alice", "x-internal": ABSENT},
        providers=(http_provider(headersToUpstreamOnAllow=["x-user-*"]),),
        http_reply=HttpReply(200, [("x-user-id", "alice"), ("x-internal", "1")]),
        http_calls=1,
        ref="§1.9 headersToUpstreamOnAllow",
    ),
    c(
        "headersToDownstreamOnAllow",
        yaml_docs(HTTP_ADMIN),
        path("/admin"),
        headers={"x-ratelimit-remaining": "9", "x-internal": ABSENT},
        providers=(http_provider(headersToDownstreamOnAllow=["*-remaining"]),),
        http_reply=HttpReply(200, [("x-ratelimit-remaining", "9"), ("x-internal", "1")]),
        http_calls=1,
        ref="§1.9 headersToDownstreamOnAllow",
    ),
    c(
        "includeRequestBodyInCheck (HTTP)",
        yaml_docs(HTTP_ADMIN),
        path("/admin", method="POST", body=b'{"amount": 5}'),
        providers=(http_provider(includeRequestBodyInCheck={"maxRequestBytes": 100}),),
        http_calls=1,
        inspect=lambda p: _assert_equal(p.http.requests[-1].body, b'{"amount": 5}'),
        ref="§1.9 includeRequestBodyInCheck",
    ),
    c(
        "no body is sent without includeRequestBodyInCheck",
        yaml_docs(HTTP_ADMIN),
        path("/admin", method="POST", body=b"secret"),
        http_calls=1,
        inspect=lambda p: _assert_equal(p.http.requests[-1].body, b""),
        ref="§1.9",
    ),
]

BODY_CASES = [
    c(
        "body over maxRequestBytes is 413",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin", method="POST", body=b"0123456789"),
        413,
        providers=(grpc_provider(includeRequestBodyInCheck={"maxRequestBytes": 4}),),
        grpc_calls=0,
        ref="§1.9 over the limit without allowPartialMessage -> 413",
    ),
    c(
        "body over maxRequestBytes is 413 even with failOpen",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin", method="POST", body=b"0123456789"),
        413,
        providers=(grpc_provider(failOpen=True, includeRequestBodyInCheck={"maxRequestBytes": 4}),),
        grpc_calls=0,
        ref="§1.9 413, even with failOpen",
    ),
    c(
        "allowPartialMessage sends the first bytes",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin", method="POST", body=b"0123456789"),
        providers=(
            grpc_provider(
                includeRequestBodyInCheck={"maxRequestBytes": 4, "allowPartialMessage": True}
            ),
        ),
        grpc_calls=1,
        inspect=seen_grpc_body("0123", "true"),
        ref="§1.9 includeRequestBodyInCheck",
    ),
    c(
        "a body within the limit is sent whole",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin", method="POST", body=b"0123"),
        providers=(grpc_provider(includeRequestBodyInCheck={"maxRequestBytes": 4}),),
        grpc_calls=1,
        inspect=seen_grpc_body("0123", "false"),
        ref="§1.9",
    ),
    c(
        "the gRPC provider gets every request header",
        yaml_docs(CUSTOM_ADMIN),
        path("/admin", headers={"x-tenant": "acme"}),
        grpc_calls=1,
        inspect=seen_grpc_header("x-tenant", "acme"),
        ref="§1.9 all request headers are sent to a gRPC provider",
    ),
]


def _assert_equal(got: Any, want: Any) -> None:
    assert got == want


@pytest.fixture(name="providers")
async def fixture_providers() -> AsyncIterator[Providers]:
    async with GrpcAuthzServer() as grpc_server, HttpAuthzServer() as http_server:
        yield Providers(grpc_server, http_server, await unused_port())


ALL = SCOPE_CASES + DECISION_CASES + ERROR_CASES + HTTP_CASES + BODY_CASES
_names = [case.case.name for case in ALL]
assert len(_names) == len(set(_names)), "duplicate case names"


@pytest.mark.parametrize("custom_case", [case.param() for case in ALL])
async def test_custom(authz: Launcher, providers: Providers, custom_case: CustomCase) -> None:
    """What the client gets, and how often (and with what) each provider was asked."""
    if custom_case.grpc_reply is not None:
        providers.grpc.reply = custom_case.grpc_reply
    if custom_case.http_reply is not None:
        providers.http.reply = custom_case.http_reply
    providers.grpc.delay = providers.http.delay = custom_case.delay
    mesh = mesh_for(custom_case.providers, providers.ports())
    await authz.run(replace(custom_case.case, mesh=mesh))
    asked = {"grpc": len(providers.grpc.requests), "http": len(providers.http.requests)}
    pinned = {"grpc": custom_case.grpc_calls, "http": custom_case.http_calls}
    want = {k: v for k, v in pinned.items() if v is not None}
    assert {k: asked[k] for k in want} == want, f"provider calls for {custom_case.case.name!r}"
    if custom_case.inspect is not None:
        custom_case.inspect(providers)
