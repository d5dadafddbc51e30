"""The decision-cache key: exactly what a workload's policies and JWT rules read, no more."""

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from services.authz import reads as reads_module
from services.authz.answer import Denial
from services.authz.authorization_policy import OPERATION_FIELDS, SOURCE_FIELDS
from services.authz.jwt.result import NO_RULES, JwtResult
from services.authz.jwt.verify import VerifiedToken
from services.authz.mesh_config import MeshSettings
from services.authz.model import CheckInput, HttpRequest, Peer, Reason
from services.authz.paths import PathNormalization
from services.authz.plan import WorkloadDefaults
from services.authz.reads import ReadSet, compile_reads, ttl_cap
from tests.conformance.harness import (
    allow,
    audit,
    cond,
    custom,
    deny,
    jwt_rule,
    op,
    request_authentication,
    rule,
    src,
)
from tests.jwt_issuer import ISSUER, NOW, jwks
from tests.unit.authz.plans import compiled

DEFAULTS = WorkloadDefaults()
TRUSTING = MeshSettings(num_trusted_proxies=1)
# Reads one header nobody varies: the policy for "this attribute is not read".
UNRELATED = allow(rule(when=cond("request.headers[x-unrelated]", ["yes"])), name="unrelated")


def reads_of(*documents: Mapping[str, Any], mesh: MeshSettings | None = None) -> ReadSet:
    config = compiled(*documents, mesh=mesh)
    return compile_reads(config.plan({}, DEFAULTS), config.mesh)


def check(
    *,
    method: str = "GET",
    host: str = "api.example.com",
    path: str = "/a",
    scheme: str = "https",
    headers: Mapping[str, str] | None = None,
    repeated: Mapping[str, tuple[str, ...]] | None = None,
    peer: str = "10.0.0.9",
    principal: str = "",
    destination: str = "10.1.0.5",
    port: int = 8080,
    sni: str = "",
    context: Mapping[str, str] | None = None,
    http: bool = True,
) -> CheckInput:
    request = HttpRequest(
        method=method,
        host=host,
        path=path,
        scheme=scheme,
        headers=dict(headers or {}),
        repeated=dict(repeated or {}),
    )
    return CheckInput(
        request=request,
        source=Peer(peer, 40000, principal),
        destination=Peer(destination, port),
        sni=sni,
        context=dict(context or {}),
        http=http,
    )


# name: (a policy that reads the attribute, a request, the same request differing there)
VARIATIONS: dict[str, tuple[dict[str, Any], CheckInput, CheckInput]] = {
    "methods": (allow(rule(to=op(methods=["GET"]))), check(), check(method="POST")),
    ":method header": (
        allow(rule(when=cond("request.headers[:method]", ["GET"]))),
        check(),
        check(method="POST"),
    ),
    "hosts": (
        allow(rule(to=op(hosts=["api.example.com"]))),
        check(),
        check(host="other.example.com"),
    ),
    ":authority header": (
        allow(rule(when=cond("request.headers[:authority]", ["api.example.com"]))),
        check(),
        check(host="other.example.com"),
    ),
    "paths": (allow(rule(to=op(paths=["/a"]))), check(), check(path="/b")),
    ":path header (query)": (
        allow(rule(when=cond("request.headers[:path]", ["/a?x=1"]))),
        check(path="/a?x=1"),
        check(path="/a?x=2"),
    ),
    "header": (
        allow(rule(when=cond("request.headers[X-Team]", ["blue"]))),
        check(headers={"x-team": "blue"}),
        check(headers={"x-team": "red"}),
    ),
    "header absent": (
        allow(rule(when=cond("request.headers[x-team]", ["blue"]))),
        check(headers={"x-team": ""}),
        check(),
    ),
    "repeated header": (
        allow(rule(when=cond("request.headers[x-team]", ["blue"]))),
        check(headers={"x-team": "blue,red"}, repeated={"x-team": ("blue", "red")}),
        check(headers={"x-team": "blue,red"}, repeated={"x-team": ("blue,red",)}),
    ),
    "ipBlocks": (allow(rule(from_=src(ipBlocks=["10.0.0.0/8"]))), check(), check(peer="10.0.0.8")),
    "source.ip": (
        deny(rule(when=cond("source.ip", ["10.0.0.8"]))),
        check(),
        check(peer="10.0.0.8"),
    ),
    "principals": (
        allow(rule(from_=src(principals=["cluster.local/ns/a/sa/b"]))),
        check(principal="spiffe://cluster.local/ns/a/sa/b"),
        check(principal="spiffe://cluster.local/ns/a/sa/c"),
    ),
    "namespaces": (
        allow(rule(from_=src(namespaces=["a"]))),
        check(principal="spiffe://cluster.local/ns/a/sa/b"),
        check(),
    ),
    "source.principal": (
        audit(rule(when=cond("source.principal", ["cluster.local/ns/a/sa/b"]))),
        check(principal="spiffe://cluster.local/ns/a/sa/b"),
        check(principal="spiffe://cluster.local/ns/b/sa/b"),
    ),
    "destination.ip": (
        allow(rule(when=cond("destination.ip", ["10.1.0.5"]))),
        check(),
        check(destination="10.1.0.6"),
    ),
    "ports": (allow(rule(to=op(ports=["8080"]))), check(), check(port=9090)),
    "destination.port": (
        allow(rule(when=cond("destination.port", ["8080"]))),
        check(),
        check(port=9090),
    ),
    "connection.sni": (
        allow(rule(when=cond("connection.sni", ["api.example.com"]))),
        check(sni="api.example.com"),
        check(sni="other.example.com"),
    ),
    "dry-run DENY": (
        deny(rule(to=op(paths=["/a"])), dry_run="true"),
        check(),
        check(path="/b"),
    ),
    "dry-run CUSTOM": (
        custom("ext", rule(to=op(paths=["/a"])), dry_run="true"),
        check(),
        check(path="/b"),
    ),
}


class TestEachAttribute:
    @pytest.mark.parametrize("name", sorted(VARIATIONS))
    def test_read_attribute_is_in_the_key(self, name: str) -> None:
        """Two requests differing only in an attribute a policy reads get different keys."""
        policy, first, second = VARIATIONS[name]
        reads = reads_of(policy)
        assert reads.cacheable
        assert reads.key(first) is not None
        assert reads.key(first) != reads.key(second)

    @pytest.mark.parametrize("name", sorted(VARIATIONS))
    def test_unread_attribute_is_not_in_the_key(self, name: str) -> None:
        """Two requests differing only in an attribute no policy reads share their key."""
        _, first, second = VARIATIONS[name]
        reads = reads_of(UNRELATED)
        assert reads.key(first) is not None
        assert reads.key(first) == reads.key(second)

    def test_no_policy_means_one_key_for_every_request(self) -> None:
        """A workload with neither policies nor JWT rules gives every request the same key."""
        reads = reads_of()
        keys = {reads.key(first) for _, first, _ in VARIATIONS.values()}
        keys |= {reads.key(second) for _, _, second in VARIATIONS.values()}
        assert len(keys) == 1 and None not in keys

    def test_key_is_a_plain_tuple_of_values(self) -> None:
        """The key is a tuple of the values themselves (compared in full), plan first."""
        reads = reads_of(allow(rule(to=op(paths=["/a"]), when=cond("request.headers[x-a]", ["1"]))))
        key = reads.key(check(headers={"x-a": "1"}))
        assert type(key) is tuple
        assert key[0] == reads.scope and key[0][0] is reads.plan
        assert (True,) in key and "1" in key  # "/a" matches the policy's one path matcher


class TestWhatNormalizationErases:
    def test_host_case_does_not_matter(self) -> None:
        """Hosts are matched lower-cased, so the key holds the lower-cased host."""
        reads = reads_of(allow(rule(to=op(hosts=["api.example.com"]))))
        assert reads.key(check(host="API.Example.com")) == reads.key(check())

    def test_paths_ignore_the_query(self) -> None:
        """``paths`` match the path without its query: the query is not in the key."""
        reads = reads_of(allow(rule(to=op(paths=["/a"]))))
        assert reads.key(check(path="/a?x=1")) == reads.key(check(path="/a?x=2"))

    def test_paths_are_keyed_normalized(self) -> None:
        """``/x/../a`` is ``/a`` to every policy, so both share a key."""
        reads = reads_of(allow(rule(to=op(paths=["/a"]))))
        assert reads.key(check(path="/x/../a")) == reads.key(check(path="/a"))
        assert reads.key(check(path="/x/../a")) != reads.key(check(path="/x/a"))

    def test_paths_no_policy_tells_apart_share_a_key(self) -> None:
        """Paths are keyed by the outcome of each path matcher, not as strings: ids in a
        path do not make every request a miss."""
        reads = reads_of(
            deny(rule(to=op(paths=["/admin/*"])), name="admins"),
            allow(
                rule(to=op(paths=["/product/*", "/api/*"], notPaths=["/api/internal"])), name="api"
            ),
        )
        assert reads.key(check(path="/product/1")) == reads.key(check(path="/product/2"))
        assert reads.key(check(path="/product/1")) == reads.key(check(path="/api/orders"))
        different = ("/admin/x", "/api/internal", "/product")  # "/product/*" misses "/product"
        keys = {reads.key(check(path=path)) for path in ("/product/1", *different)}
        assert len(keys) == 4

    def test_path_answers_are_remembered_within_bounds(self) -> None:
        """The matchers' answers for a path are kept per ReadSet: the same key either way,
        short paths only, and a full memo starts over instead of growing."""
        reads = reads_of(allow(rule(to=op(paths=["/a/*"]))))
        first = reads.key(check(path="/a/1"))
        assert reads.path_answers == {"/a/1": (True,)}
        assert reads.key(check(path="/a/1")) == first == reads.key(check(path="/a/2"))
        long_path = "/a/" + "x" * reads_module.PATH_MEMO_MAX_CHARS
        assert reads.key(check(path=long_path)) == first
        assert long_path not in reads.path_answers
        for index in range(reads_module.PATH_MEMO_ENTRIES + 5):
            reads.key(check(path=f"/b/{index}"))
        assert len(reads.path_answers) <= reads_module.PATH_MEMO_ENTRIES

    def test_equal_path_matchers_are_tested_once(self) -> None:
        """Policies repeating one pattern list share one slot of the key."""
        reads = reads_of(
            deny(rule(to=op(paths=["/a/*"])), name="one"),
            allow(rule(to=op(paths=["/a/*"])), name="two"),
            allow(rule(to=op(notPaths=["/b"])), name="three"),
        )
        assert len(reads.path_tests) == 2

    def test_path_normalization_mode_is_applied(self) -> None:
        """With MERGE_SLASHES, ``//a`` and ``/a`` are one path; with BASE they are two."""
        policy = allow(rule(to=op(paths=["/a"])))
        base = reads_of(policy)
        merging = compile_reads(
            base.plan, replace(MeshSettings(), path_normalization=PathNormalization.MERGE_SLASHES)
        )
        assert base.key(check(path="//a")) != base.key(check(path="/a"))
        assert merging.key(check(path="//a")) == merging.key(check(path="/a"))

    def test_xff_is_read_only_with_trusted_proxies(self) -> None:
        """remoteIpBlocks read X-Forwarded-For only when numTrustedProxies is above 0."""
        policy = allow(rule(from_=src(remoteIpBlocks=["203.0.113.0/24"])))
        first = check(headers={"x-forwarded-for": "203.0.113.1,10.0.0.9"})
        second = check(headers={"x-forwarded-for": "198.51.100.1,10.0.0.9"})
        assert reads_of(policy, mesh=TRUSTING).key(first) != reads_of(policy, mesh=TRUSTING).key(
            second
        )
        plain = reads_of(policy)
        assert plain.key(first) == plain.key(second)

    def test_xff_entries_beyond_the_trusted_one_do_not_matter(self) -> None:
        """The key holds the trusted client address, not the whole XFF header or the peer."""
        reads = reads_of(allow(rule(when=cond("remote.ip", ["203.0.113.1"]))), mesh=TRUSTING)
        first = check(headers={"x-forwarded-for": "203.0.113.1,10.0.0.9"})
        second = check(headers={"x-forwarded-for": "192.0.2.1, 203.0.113.1,10.0.0.9"})
        assert reads.key(first) == reads.key(second)
        assert reads.key(first) == reads.key(check(peer="10.0.0.8", headers=first.request.headers))
        assert reads.key(check()) != reads.key(check(peer="10.0.0.8"))  # no XFF: the peer


class TestRefusedRequests:
    @pytest.mark.parametrize(
        "refused",
        [check(http=False), check(method="get"), check(path="no-slash"), check(path="/a%00")],
        ids=["tcp", "lower-case method", "relative path", "encoded NUL"],
    )
    def test_requests_normalize_refuses_get_no_key(self, refused: CheckInput) -> None:
        """What normalize answers with 403/400 at once is never cached."""
        assert reads_of(UNRELATED).key(refused) is None

    def test_oversized_keys_are_not_cached(self) -> None:
        """A key longer than max_key_chars is None, so entries stay bounded in size."""
        config = compiled(allow(rule(when=cond("request.headers[x-big]", ["1"]))))
        reads = compile_reads(config.plan({}, DEFAULTS), config.mesh, max_key_chars=100)
        assert reads.key(check(headers={"x-big": "1" * 100})) is not None
        assert reads.key(check(headers={"x-big": "1" * 101})) is None


class TestCacheability:
    def test_enforced_custom_makes_the_plan_uncacheable(self) -> None:
        """A plan with an enforced CUSTOM policy asks a provider: no request gets a key."""
        reads = reads_of(custom("ext", rule(to=op(paths=["/a"]))))
        assert not reads.cacheable
        assert "CUSTOM" in reads.uncacheable
        assert reads.key(check()) is None

    def test_every_policy_field_is_known(self) -> None:
        """Every source and operation field compiles to a check the key knows how to read."""
        fields: list[dict[str, Any]] = []
        for name in SOURCE_FIELDS:
            if name == "serviceAccounts":
                continue  # cannot share a source with principals; covered below
            value = {
                "principals": "cluster.local/ns/a/sa/b",
                "namespaces": "a",
                "requestPrincipals": f"{ISSUER}/alice",
                "ipBlocks": "10.0.0.0/8",
                "remoteIpBlocks": "10.0.0.0/8",
            }[name]
            fields.append(src(**{name: [value]}))
        fields.append(src(serviceAccounts=["a/b"]))
        operation = {"hosts": ["a.example"], "ports": ["80"], "methods": ["GET"], "paths": ["/a"]}
        assert set(operation) == set(OPERATION_FIELDS)
        reads = reads_of(allow(rule(from_=fields, to=op(**operation))))
        assert reads.cacheable, reads.uncacheable

    def test_every_condition_key_is_known(self) -> None:
        """Every kind of ``when`` key compiles to a check the key knows how to read."""
        conditions = [
            cond("source.ip", ["10.0.0.1"]),
            cond("remote.ip", ["10.0.0.1"]),
            cond("source.namespace", ["a"]),
            cond("source.principal", ["cluster.local/ns/a/sa/b"]),
            cond("source.serviceAccount", ["a/b"]),
            cond("source.trustDomain", ["cluster.local"]),
            cond("request.auth.principal", [f"{ISSUER}/alice"]),
            cond("request.auth.audiences", ["api"]),
            cond("request.auth.presenter", ["web"]),
            cond("request.auth.claims[groups]", ["admin"]),
            cond("request.headers[x-a]", ["1"]),
            cond("destination.ip", ["10.0.0.1"]),
            cond("destination.port", ["80"]),
            cond("connection.sni", ["a.example"]),
        ]
        reads = reads_of(allow(rule(when=conditions)))
        assert reads.cacheable, reads.uncacheable
        assert (reads.source_ip, reads.remote_ip, reads.source_principal) == (True, True, True)
        assert (reads.destination_ip, reads.destination_port, reads.sni) == (True, True, True)
        assert reads.headers == ("x-a",)
        assert not (reads.method or reads.host or reads.path_tests or reads.path_with_query)

    def test_identity_without_jwt_rules_reads_nothing(self) -> None:
        """Without JWT rules the identity is always absent: requests share one key."""
        reads = reads_of(allow(rule(from_=src(requestPrincipals=["*"]))))
        assert not reads.jwt
        token = check(headers={"authorization": "Bearer abc"})
        assert reads.key(token) == reads.key(check())

    def test_each_reload_keys_apart(self) -> None:
        """The same documents loaded twice (a reload) give keys that never match."""
        policy = allow(rule(to=op(paths=["/a"])))
        assert reads_of(policy).key(check()) != reads_of(policy).key(check())

    def test_context_extensions_are_in_the_key(self) -> None:
        """What picks the plan is in the key too, so a key stands on its own."""
        config = compiled(UNRELATED)
        reads = compile_reads(config.plan({}, DEFAULTS), config.mesh)
        spelled = check(context={"namespace": "istio-system"})
        assert config.plan(spelled.context, DEFAULTS) is reads.plan
        assert reads.key(spelled) != reads.key(check())


AUTHN = request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa")))
PLACES = request_authentication(
    jwt_rule(
        ISSUER,
        jwks=jwks("rsa"),
        fromHeaders=[{"name": "x-jwt", "prefix": "Token "}],
        fromParams=["token"],
        fromCookies=["session"],
    )
)


class TestJwtReads:
    @pytest.mark.parametrize(
        ("document", "first", "second"),
        [
            (
                AUTHN,
                check(headers={"authorization": "Bearer aaa"}),
                check(headers={"authorization": "Bearer bbb"}),
            ),
            (AUTHN, check(path="/a?access_token=aaa"), check(path="/a?access_token=bbb")),
            (
                PLACES,
                check(headers={"x-jwt": "Token aaa"}),
                check(headers={"x-jwt": "Token bbb"}),
            ),
            (PLACES, check(path="/a?token=aaa"), check(path="/a?token=bbb")),
            (
                PLACES,
                check(headers={"cookie": "session=aaa"}),
                check(headers={"cookie": "session=bbb"}),
            ),
        ],
        ids=["authorization", "access_token", "fromHeaders", "fromParams", "fromCookies"],
    )
    def test_tokens_are_in_the_key(
        self, document: dict[str, Any], first: CheckInput, second: CheckInput
    ) -> None:
        """A token at any location the plan extracts from is part of the key."""
        reads = reads_of(document)
        assert reads.key(first) != reads.key(second)

    def test_unused_locations_are_not_in_the_key(self) -> None:
        """Headers, parameters and cookies that are not token locations do not matter."""
        reads = reads_of(PLACES)
        first = check(path="/a?page=1", headers={"authorization": "Bearer a", "cookie": "x=1"})
        second = check(path="/a?page=2", headers={"authorization": "Bearer b", "cookie": "x=2"})
        assert reads.key(first) == reads.key(second)

    def test_what_surrounds_a_token_does_not_matter(self) -> None:
        """The extracted token is keyed, not the header it came in."""
        reads = reads_of(PLACES)
        first = check(headers={"cookie": "a=1; session=tok"})
        second = check(headers={"cookie": "session=tok; b=2"})
        assert reads.key(first) == reads.key(second)

    def test_the_realm_of_a_rejection_is_not_in_the_key(self) -> None:
        """A rejected token's www-authenticate realm (scheme, host, :path) is not keyed:
        rejections are never cached, and equal keys hold equal tokens."""
        reads = reads_of(AUTHN)
        bearer = {"authorization": "Bearer aaa"}
        base = check(headers=bearer)
        assert reads.key(base) == reads.key(check(headers=bearer, path="/b"))
        assert reads.key(base) == reads.key(check(headers=bearer, scheme="http"))
        assert reads.key(base) == reads.key(check(headers=bearer, host="API.example.com"))

    def test_without_a_token_the_realm_is_not_read(self) -> None:
        """A request without a token is never rejected with a realm: path and host are free."""
        reads = reads_of(AUTHN)
        assert reads.key(check()) == reads.key(check(path="/b", scheme="http", host="x"))

    def test_cors_preflight_is_in_the_key(self) -> None:
        """A CORS preflight skips the JWT step, so being one is part of the key."""
        reads = reads_of(AUTHN, allow(rule(to=op(paths=["/a"]))))
        cors = {"origin": "https://app.example", "access-control-request-method": "GET"}
        preflight = check(method="OPTIONS", headers=cors)
        assert reads.key(preflight) != reads.key(check(method="OPTIONS"))
        assert reads.key(check(headers=cors)) == reads.key(check())

    def test_without_jwt_rules_cors_headers_do_not_matter(self) -> None:
        """Without JWT rules nothing reads Origin or Access-Control-Request-Method."""
        reads = reads_of(UNRELATED)
        cors = {"origin": "https://app.example", "access-control-request-method": "GET"}
        assert reads.key(check(method="OPTIONS", headers=cors)) == reads.key(check())


def verified(expires_at: float | None) -> VerifiedToken:
    return VerifiedToken(ISSUER, "alice", {}, f"{ISSUER}/alice", expires_at, "")


class TestTtlCap:
    def test_rejected_token_is_not_cached(self) -> None:
        """A JWT denial (the key set may change, nbf may pass) is never cached."""
        denial = Denial(401, "Jwks remote fetch is failed", Reason("jwt"))
        assert ttl_cap(denial, NOW) is None

    def test_no_token_has_no_cap(self) -> None:
        """Without rules or without a token, only the cache's own TTL applies."""
        assert ttl_cap(NO_RULES, NOW) == float("inf")
        assert ttl_cap(JwtResult(status="missing"), NOW) == float("inf")

    def test_cap_is_the_earliest_exp(self) -> None:
        """With tokens, an entry lives until the first of them expires."""
        result = JwtResult(status="ok", tokens=(verified(NOW + 30), verified(NOW + 10)))
        assert ttl_cap(result, NOW) == 10

    def test_token_without_exp_has_no_cap(self) -> None:
        """A token that never expires leaves the cache's TTL in charge."""
        assert ttl_cap(JwtResult(status="ok", tokens=(verified(None),)), NOW) == float("inf")

    def test_expired_token_is_not_cached(self) -> None:
        """A token at or past its exp (still accepted within the skew) is not cached."""
        assert ttl_cap(JwtResult(status="ok", tokens=(verified(NOW),)), NOW) is None
