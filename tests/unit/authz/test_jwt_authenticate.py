"""The JWT step of a Check: Istio's RequestAuthentication semantics end to end."""

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.jwks import JwkSet, parse_jwks
from services.authz.jwt.keys import JwksUnavailableError, KeyResolver, RemoteKeySource
from services.authz.jwt.outputs import claim_header_value
from services.authz.jwt.plan import compile_jwt_plan
from services.authz.jwt.result import JwtResult, www_authenticate
from services.authz.jwt.rules import JwtRule
from services.authz.model import HttpRequest
from services.clock import ManualClock
from tests.jwt_issuer import ISSUER, NOW, JwksServer, claims, jwks, tampered, token

OTHER = "https://other.example.com"
RULE = JwtRule(issuer=ISSUER, jwks=jwks("rsa", "ec256"), source="ns/authn#jwtRules[0]")


class CountingKeys:
    """Inline keys, counting calls; ``rotated`` replaces an issuer's keys on refresh."""

    def __init__(self, rotated: dict[str, str] | None = None, down: set[str] | None = None):
        self.resolver = KeyResolver()
        self.rotated = dict(rotated or {})
        self.down = down or set()
        self.calls = 0
        self.refreshes = 0

    async def keys(self, rule: JwtRule) -> JwkSet:
        self.calls += 1
        if rule.issuer in self.down:
            raise JwksUnavailableError("connection refused")
        return await self.resolver.keys(rule)

    async def refresh(self, rule: JwtRule) -> JwkSet:
        self.refreshes += 1
        if rule.issuer in self.rotated:
            return parse_jwks(self.rotated.pop(rule.issuer))
        return await self.resolver.refresh(rule)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def keys() -> CountingKeys:
    return CountingKeys()


@pytest.fixture
def authn(keys: CountingKeys, clock: ManualClock) -> JwtAuthenticator:
    return JwtAuthenticator(keys, clock)


def bearer(jwt: str, path: str = "/api?x=1", **headers: str) -> HttpRequest:
    merged = {"authorization": f"Bearer {jwt}"}
    merged.update({k.replace("_", "-"): v for k, v in headers.items()})
    return HttpRequest(host="api.example.com", path=path, headers=merged)


def plain(path: str = "/api", **headers: str) -> HttpRequest:
    return HttpRequest(
        host="api.example.com",
        path=path,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


async def run(authn: JwtAuthenticator, rules: list[JwtRule], req: HttpRequest) -> JwtResult:
    """The JWT step for ``req`` under a plan compiled from ``rules`` for this call."""
    return await authn.authenticate(compile_jwt_plan(rules), req)


class TestResult:
    def test_result_is_plain_data(self) -> None:
        """Results compare by value, so they are easy to assert and log."""
        parsed = json.loads('{"sub": "x"}')
        assert JwtResult(status="ok", claims={"sub": "x"}) == JwtResult(status="ok", claims=parsed)

    def test_www_authenticate_is_read_from_response_headers(self) -> None:
        """The challenge is exposed as a property; absent outside failures."""
        assert JwtResult(status="ok").www_authenticate is None
        denied = JwtResult(status="invalid", response_headers=(("www-authenticate", "Bearer"),))
        assert denied.www_authenticate == "Bearer"


class TestNoToken:
    async def test_no_rules(self, authn: JwtAuthenticator) -> None:
        """Without rules the step does nothing."""
        assert (await run(authn, [], bearer("garbage"))).status == "none"

    async def test_missing_token_is_allowed(self, authn: JwtAuthenticator) -> None:
        """No token anywhere: allowed, unauthenticated."""
        result = await run(authn, [RULE], plain())
        assert result.status == "missing" and result.principal is None and result.http_status == 0

    @pytest.mark.parametrize("value", ["bearer x.y.z", "Basic dXNlcg==", "x.y.z", "Token abc"])
    async def test_authorization_without_bearer_prefix_is_missing(
        self, authn: JwtAuthenticator, value: str
    ) -> None:
        """A prefix-less or differently cased Authorization header counts as no token."""
        assert (await run(authn, [RULE], plain(authorization=value))).status == "missing"

    async def test_client_copies_of_output_headers_are_removed(
        self, authn: JwtAuthenticator
    ) -> None:
        """Even without a token, client-sent output headers are stripped."""
        rule = JwtRule(
            issuer=ISSUER,
            jwks=RULE.jwks,
            output_payload_to_header="X-Jwt-Payload",
            output_claim_to_headers=(("x-user", "sub"),),
        )
        result = await run(authn, [rule], plain(x_jwt_payload="forged", x_user="root"))
        assert result.status == "missing"
        assert result.headers_to_remove == ("x-jwt-payload", "x-user")


class TestValidToken:
    async def test_default_location(self, authn: JwtAuthenticator) -> None:
        """A valid bearer token authenticates and its header is removed upstream."""
        result = await run(authn, [RULE], bearer(token(claims(scope="read write"))))
        assert result.status == "ok"
        assert result.principal == f"{ISSUER}/alice"
        assert (result.issuer, result.subject) == (ISSUER, "alice")
        assert result.claims is not None and result.claims["scope"] == ["read", "write"]
        assert result.headers_to_remove == ("authorization",)
        assert result.query_params_to_remove == () and result.headers_to_add == ()

    async def test_forward_original_token(self, authn: JwtAuthenticator) -> None:
        """``forwardOriginalToken`` keeps the token header."""
        rule = JwtRule(issuer=ISSUER, jwks=RULE.jwks, forward_original_token=True)
        result = await run(authn, [rule], bearer(token(claims())))
        assert result.status == "ok" and result.headers_to_remove == ()

    async def test_query_parameter_token_is_removed(self, authn: JwtAuthenticator) -> None:
        """A token in ``?access_token=`` is removed from the path, no header is touched."""
        result = await run(authn, [RULE], plain(f"/api?access_token={token(claims())}&a=1"))
        assert result.status == "ok"
        assert result.query_params_to_remove == ("access_token",)
        assert result.headers_to_remove == ()

    async def test_cookie_token_is_left_alone(self, authn: JwtAuthenticator) -> None:
        """A cookie token authenticates but nothing is removed (as in Envoy)."""
        rule = JwtRule(issuer=ISSUER, jwks=RULE.jwks, from_cookies=("session",))
        result = await run(authn, [rule], plain(cookie=f"a=b; session={token(claims())}"))
        assert result.status == "ok"
        assert result.headers_to_remove == () and result.query_params_to_remove == ()

    async def test_custom_header_with_prefix(self, authn: JwtAuthenticator) -> None:
        """A custom header and prefix are honoured and that header is removed."""
        rule = JwtRule(issuer=ISSUER, jwks=RULE.jwks, from_headers=(("x-jwt", "JWT "),))
        result = await run(authn, [rule], plain(x_jwt=f"JWT {token(claims())}"))
        assert result.status == "ok" and result.headers_to_remove == ("x-jwt",)
        assert (await run(authn, [rule], plain(x_jwt=token(claims())))).status == "missing"

    async def test_extra_space_delimited_claims(self, authn: JwtAuthenticator) -> None:
        """A rule's ``spaceDelimitedClaims`` are split too."""
        rule = JwtRule(issuer=ISSUER, jwks=RULE.jwks, space_delimited_claims=("roles",))
        result = await run(authn, [rule], bearer(token(claims(roles="a b"))))
        assert result.claims is not None and result.claims["roles"] == ["a", "b"]


class TestOutputHeaders:
    RULE = JwtRule(
        issuer=ISSUER,
        jwks=RULE.jwks,
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(
            ("x-sub", "sub"),
            ("x-level", "level"),
            ("x-admin", "admin"),
            ("x-team", "org.team"),
            ("x-groups", "groups"),
            ("x-missing", "nope"),
        ),
    )

    async def test_payload_and_claims(self, authn: JwtAuthenticator) -> None:
        """Payload and claims are copied; absent claims still strip client copies."""
        payload = claims(level=3, admin=True, org={"team": "blue"}, groups=["a", "b"])
        jwt = token(payload)
        result = await run(authn, [self.RULE], bearer(jwt, x_missing="forged"))
        assert dict(result.headers_to_add) == {
            "x-jwt-payload": jwt.split(".")[1],
            "x-sub": "alice",
            "x-level": "3",
            "x-admin": "true",
            "x-team": "blue",
            "x-groups": base64.b64encode(b'["a","b"]').decode(),
        }
        assert result.headers_to_remove == ("x-missing", "authorization")

    async def test_headers_to_remove_never_names_added_headers(
        self, authn: JwtAuthenticator
    ) -> None:
        """Envoy removes after adding, so set headers are not also removed."""
        result = await run(authn, [self.RULE], bearer(token(claims()), x_sub="forged"))
        assert ("x-sub", "alice") in result.headers_to_add
        assert "x-sub" not in result.headers_to_remove

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            ("", None),
            (None, None),
            (7, "7"),
            (7.0, "7"),
            (1.5, "1.500000"),
            (-2, "-2.000000"),
            (2**63, "9223372036854775808"),
            (10**20, "100000000000000000000.000000"),
            (False, "false"),
            ({"a": 1.0, "b": "é"}, base64.b64encode('{"a":1,"b":"é"}'.encode()).decode()),
        ],
    )
    def test_claim_text(self, value: Any, text: str | None) -> None:
        """Claims become header text the way Envoy's claim_to_headers writes them."""
        assert claim_header_value({"c": value}, "c") == text

    def test_nested_claim_paths(self) -> None:
        """Dots walk into objects; a non-object on the way means no header."""
        payload = {"a": {"b": {"c": "deep"}}, "s": "x"}
        assert claim_header_value(payload, "a.b.c") == "deep"
        assert claim_header_value(payload, "s.t") is None
        assert claim_header_value(payload, "a.x") is None


class TestFailures:
    async def test_bad_signature_is_401_with_challenge(self, authn: JwtAuthenticator) -> None:
        """An invalid token is a 401 with the status string and Envoy's challenge."""
        result = await run(authn, [RULE], bearer(tampered(token(claims()))))
        assert (result.status, result.http_status, result.body) == (
            "invalid",
            401,
            "Jwt verification fails",
        )
        assert result.www_authenticate == (
            'Bearer realm="http://api.example.com/api?x=1", error="invalid_token"'
        )

    async def test_unknown_issuer(self, authn: JwtAuthenticator) -> None:
        """A token whose issuer has no rule is rejected, not ignored."""
        result = await run(authn, [RULE], bearer(token(claims(iss=OTHER))))
        assert (result.http_status, result.body) == (401, "Jwt issuer is not configured")

    async def test_issuer_must_match_the_location(self, authn: JwtAuthenticator) -> None:
        """A valid token presented where only another issuer's rule looks is rejected."""
        other = JwtRule(issuer=OTHER, jwks=RULE.jwks, from_headers=(("x-other", ""),))
        result = await run(authn, [RULE, other], plain(x_other=token(claims())))
        assert result.body == "Jwt issuer is not configured"

    async def test_one_bad_token_among_good_ones(self, authn: JwtAuthenticator) -> None:
        """Every extracted token must be valid."""
        req = bearer(token(claims()), path=f"/api?access_token={token(claims(exp=1))}")
        result = await run(authn, [RULE], req)
        assert (result.http_status, result.body) == (401, "Jwt is expired")

    async def test_failure_reported_is_the_last_extracted(self, authn: JwtAuthenticator) -> None:
        """With several bad tokens, the one Envoy checks first (the last found) is reported."""
        req = bearer(token(claims(exp=1)), path=f"/api?access_token={token(claims(iss=OTHER))}")
        result = await run(authn, [RULE], req)
        assert result.body == "Jwt issuer is not configured"
        assert "param access_token" in result.detail

    async def test_bad_audience_is_403(self, authn: JwtAuthenticator) -> None:
        """A disallowed audience is 403; Envoy sends the challenge header with it too."""
        rule = JwtRule(issuer=ISSUER, jwks=RULE.jwks, audiences=("https://api.example.com/",))
        result = await run(authn, [rule], bearer(token(claims(aud="web.example.com"))))
        assert (result.http_status, result.body) == (403, "Audiences in Jwt are not allowed")
        assert result.www_authenticate is not None
        good = await run(authn, [rule], bearer(token(claims(aud="http://api.example.com"))))
        assert good.status == "ok"

    async def test_keys_unavailable(self, clock: ManualClock) -> None:
        """No keys for the issuer fails closed with "Jwks remote fetch is failed"."""
        authn = JwtAuthenticator(CountingKeys(down={ISSUER}), clock)
        result = await run(authn, [RULE], bearer(token(claims())))
        assert (result.http_status, result.body) == (401, "Jwks remote fetch is failed")

    async def test_malformed_token(self, authn: JwtAuthenticator) -> None:
        """A non-JWT bearer value is a 401 format error."""
        result = await run(authn, [RULE], bearer("not-a-jwt"))
        assert result.body == (
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        )

    def test_realm_is_truncated_and_fragment_free(self) -> None:
        """The realm is scheme://host + path (≤256 characters), without a fragment."""
        long_path = "/" + "a" * 300
        req = HttpRequest(scheme="https", host="h.example", path=long_path + "#frag")
        assert www_authenticate(req, "Jwt is expired") == (
            f'Bearer realm="https://h.example{long_path[:256]}", error="invalid_token"'
        )
        assert www_authenticate(req, "Jwt is missing") == (
            f'Bearer realm="https://h.example{long_path[:256]}"'
        )


class TestSameIssuerRules:
    FIRST = JwtRule(
        issuer=ISSUER,
        jwks=jwks("ec256"),
        audiences=("first",),
        output_claim_to_headers=(("x-via", "sub"),),
    )
    SECOND = JwtRule(
        issuer=ISSUER,
        jwks=jwks("rsa"),
        audiences=("second",),
        output_payload_to_header="x-second",
    )

    async def test_rules_are_ored(self, authn: JwtAuthenticator) -> None:
        """A token valid for the second rule only is accepted, with that rule's outputs."""
        result = await run(authn, [self.FIRST, self.SECOND], bearer(token(claims(aud="second"))))
        assert result.status == "ok"
        assert [name for name, _ in result.headers_to_add] == ["x-second"]
        assert result.headers_to_remove == ("x-via", "authorization")

    async def test_first_matching_rule_wins(self, authn: JwtAuthenticator) -> None:
        """When the first rule accepts, its outputs apply."""
        jwt = token(claims(aud="first"), key="ec256")
        result = await run(authn, [self.FIRST, self.SECOND], bearer(jwt))
        assert result.headers_to_add == (("x-via", "alice"),)

    async def test_no_rule_accepts(self, authn: JwtAuthenticator) -> None:
        """When every rule refuses, the first rule's failure is reported."""
        result = await run(authn, [self.FIRST, self.SECOND], bearer(token(claims(aud="third"))))
        assert (result.http_status, result.body) == (403, "Audiences in Jwt are not allowed")
        wrong_key = token(claims(aud=["first", "second"]), key="ed25519")
        failed = await run(authn, [self.FIRST, self.SECOND], bearer(wrong_key))
        assert failed.body == "Jwks doesn't have key to match kid or alg from Jwt"


class TestCache:
    async def test_second_request_is_served_from_cache(
        self, authn: JwtAuthenticator, keys: CountingKeys
    ) -> None:
        """A verified token is not verified again."""
        jwt = token(claims())
        first = await run(authn, [RULE], bearer(jwt))
        second = await run(authn, [RULE], bearer(jwt))
        assert first == second and keys.calls == 1 and authn.cached_tokens == 1

    async def test_expiry_is_rechecked_on_hit(
        self, authn: JwtAuthenticator, clock: ManualClock
    ) -> None:
        """A cached token stops working once ``exp + 60 s`` has passed."""
        jwt = token(claims(exp=int(NOW) + 100))
        assert (await run(authn, [RULE], bearer(jwt))).status == "ok"
        clock.advance(160)
        assert (await run(authn, [RULE], bearer(jwt))).status == "ok"
        clock.advance(1)
        assert (await run(authn, [RULE], bearer(jwt))).body == "Jwt is expired"

    async def test_tokens_without_exp_are_cached_for_max_ttl(
        self, keys: CountingKeys, clock: ManualClock
    ) -> None:
        """Without ``exp`` an entry lives ``max_cache_ttl`` seconds."""
        authn = JwtAuthenticator(keys, clock, max_cache_ttl=300)
        jwt = token(claims(exp=None))
        await run(authn, [RULE], bearer(jwt))
        clock.advance(299)
        await run(authn, [RULE], bearer(jwt))
        assert keys.calls == 1
        clock.advance(1)
        assert (await run(authn, [RULE], bearer(jwt))).status == "ok"
        assert keys.calls == 2

    async def test_cache_respects_the_location(self, authn: JwtAuthenticator) -> None:
        """A token cached as valid in one location is still checked in another."""
        other = JwtRule(issuer=OTHER, jwks=RULE.jwks, from_params=("t",))
        jwt = token(claims())
        assert (await run(authn, [RULE, other], bearer(jwt))).status == "ok"
        moved = await run(authn, [RULE, other], plain(f"/api?t={jwt}"))
        assert moved.body == "Jwt issuer is not configured"

    async def test_cached_answer_depends_on_the_rule_set(self, authn: JwtAuthenticator) -> None:
        """The same token under a larger rule set also strips that set's output headers."""
        jwt = token(claims())
        extra = JwtRule(issuer=OTHER, jwks=RULE.jwks, output_payload_to_header="x-other")
        alone = await run(authn, [RULE], bearer(jwt))
        together = await run(authn, [RULE, extra], bearer(jwt))
        again = await run(authn, [RULE], bearer(jwt))
        assert alone.headers_to_remove == again.headers_to_remove == ("authorization",)
        assert together.headers_to_remove == ("x-other", "authorization")

    async def test_cache_is_bounded(self, keys: CountingKeys, clock: ManualClock) -> None:
        """The least recently used entries are evicted."""
        authn = JwtAuthenticator(keys, clock, cache_size=2)
        for name in ("a", "b", "c"):
            await run(authn, [RULE], bearer(token(claims(sub=name))))
        assert authn.cached_tokens == 2

    async def test_failures_are_not_cached(
        self, authn: JwtAuthenticator, keys: CountingKeys
    ) -> None:
        """An invalid token is checked again on every request."""
        bad = tampered(token(claims()))
        await run(authn, [RULE], bearer(bad))
        await run(authn, [RULE], bearer(bad))
        assert keys.calls == 2 and authn.cached_tokens == 0


class TestKeyRotation:
    async def test_unknown_kid_triggers_refresh(self, clock: ManualClock) -> None:
        """A token with an unknown ``kid`` refreshes the keys once and then verifies."""
        keys = CountingKeys(rotated={ISSUER: jwks("rsa", "rsa-2")})
        authn = JwtAuthenticator(keys, clock)
        result = await run(authn, [RULE], bearer(token(claims(), key="rsa-2")))
        assert result.status == "ok" and keys.refreshes == 1

    async def test_unknown_kid_without_new_keys(
        self, authn: JwtAuthenticator, keys: CountingKeys
    ) -> None:
        """When refreshing does not help the kid mismatch is reported."""
        result = await run(authn, [RULE], bearer(token(claims(), key="rsa-2")))
        assert result.body == "Jwks doesn't have key to match kid or alg from Jwt"
        assert keys.refreshes == 1

    async def test_kidless_token_does_not_refresh(
        self, authn: JwtAuthenticator, keys: CountingKeys
    ) -> None:
        """Only a ``kid`` the keys lack is a reason to refresh."""
        await run(authn, [RULE], bearer(token(claims(), key="rsa-2", kid=None)))
        assert keys.refreshes == 0


class TestRemoteEndToEnd:
    @pytest.fixture
    async def server(self) -> AsyncIterator[JwksServer]:
        running = await JwksServer(jwks("rsa")).start()
        yield running
        await running.close()

    async def test_discovery_fetch_then_cache(self, server: JwksServer, clock: ManualClock) -> None:
        """Keys found by OIDC discovery verify tokens; later requests fetch nothing."""
        authn = JwtAuthenticator(KeyResolver(remote=RemoteKeySource(clock=clock)), clock)
        rule = JwtRule(issuer=server.issuer)
        for subject in ("a", "b"):
            jwt = token(claims(iss=server.issuer, sub=subject))
            result = await run(authn, [rule], bearer(jwt))
            assert result.principal == f"{server.issuer}/{subject}"
        assert (server.discovery_fetches, server.jwks_fetches) == (1, 1)
        await authn.aclose()

    async def test_remote_failure_before_first_fetch(
        self, server: JwksServer, clock: ManualClock
    ) -> None:
        """An unreachable key set rejects tokens instead of letting them through."""
        server.fail = True
        authn = JwtAuthenticator(KeyResolver(remote=RemoteKeySource(clock=clock)), clock)
        rule = JwtRule(issuer=ISSUER, jwks_uri=server.jwks_uri)
        result = await run(authn, [rule], bearer(token(claims())))
        assert (result.http_status, result.body) == (401, "Jwks remote fetch is failed")
        await authn.aclose()


class TestPlan:
    async def test_plan_is_compiled_once_and_reused(
        self, authn: JwtAuthenticator, keys: CountingKeys
    ) -> None:
        """One plan serves every request: the same token under it gets the very same answer."""
        plan = compile_jwt_plan([RULE])
        jwt = token(claims())
        first = await authn.authenticate(plan, bearer(jwt))
        second = await authn.authenticate(plan, bearer(jwt))
        assert first.status == "ok" and second is first and keys.calls == 1

    async def test_empty_plan_answers_no_rules(self, authn: JwtAuthenticator) -> None:
        """A plan without rules is empty and leaves the request alone."""
        plan = compile_jwt_plan([])
        assert plan.empty and not compile_jwt_plan([RULE]).empty
        assert await authn.authenticate(plan, bearer("garbage")) == JwtResult(status="none")

    async def test_plans_of_equal_rules_share_verified_tokens(
        self, authn: JwtAuthenticator, keys: CountingKeys
    ) -> None:
        """Plans compiled separately from rules equal in value reuse one verification."""
        jwt = token(claims())
        one = await authn.authenticate(compile_jwt_plan([RULE]), bearer(jwt))
        copy = JwtRule(issuer=RULE.issuer, jwks=RULE.jwks, source=RULE.source)
        two = await authn.authenticate(compile_jwt_plan([copy]), bearer(jwt))
        assert one == two and keys.calls == 1 and authn.cached_tokens == 1


class TestReload:
    async def test_narrowed_audience_refuses_a_cached_token(self, authn: JwtAuthenticator) -> None:
        """A reload that changes a rule's audiences does not accept a token the old rule cached."""
        old = compile_jwt_plan([JwtRule(issuer=ISSUER, jwks=RULE.jwks, audiences=("a",))])
        new = compile_jwt_plan([JwtRule(issuer=ISSUER, jwks=RULE.jwks, audiences=("b",))])
        jwt = token(claims(aud="a"))
        assert (await authn.authenticate(old, bearer(jwt))).status == "ok"
        refused = await authn.authenticate(new, bearer(jwt))
        assert (refused.http_status, refused.body) == (403, "Audiences in Jwt are not allowed")

    async def test_changed_keys_in_a_rule_verify_again(self, authn: JwtAuthenticator) -> None:
        """A reload that replaces a rule's inline keys checks the cached token again."""
        jwt = token(claims())
        before = JwtRule(issuer=ISSUER, jwks=jwks("rsa"))
        after = JwtRule(issuer=ISSUER, jwks=jwks("ec256"))
        assert (await authn.authenticate(compile_jwt_plan([before]), bearer(jwt))).status == "ok"
        again = await authn.authenticate(compile_jwt_plan([after]), bearer(jwt))
        assert again.body == "Jwks doesn't have key to match kid or alg from Jwt"

    async def test_other_rules_of_the_location_count(self, authn: JwtAuthenticator) -> None:
        """A rule added at the token's location is a different location: the token is re-checked
        and the first accepting rule (now the added one) supplies the outputs."""
        added = JwtRule(issuer=ISSUER, jwks=RULE.jwks, output_payload_to_header="x-payload")
        jwt = token(claims())
        assert (await run(authn, [RULE], bearer(jwt))).headers_to_add == ()
        result = await run(authn, [added, RULE], bearer(jwt))
        assert [name for name, _ in result.headers_to_add] == ["x-payload"]


class TestMetadata:
    async def test_metadata_of_a_verified_token(self, authn: JwtAuthenticator) -> None:
        """The metadata carries principal, issuer, subject, claims and their text forms."""
        payload = claims(scope="read write", level=3, org={"b": 1, "a": [2]})
        result = await run(authn, [RULE], bearer(token(payload)))
        assert result.metadata is not None
        assert (result.metadata["principal"], result.metadata["subject"]) == (
            f"{ISSUER}/alice",
            "alice",
        )
        assert result.metadata["issuer"] == ISSUER
        assert result.metadata["claims"] == result.claims
        text = result.metadata["claim_text"]
        assert (text["scope"], text["level"], text["org"]) == ("read,write", "3", '{"a":[2],"b":1}')

    async def test_no_subject_is_empty_text(self, authn: JwtAuthenticator) -> None:
        """A token without ``sub`` has empty principal and subject in the metadata."""
        result = await run(authn, [RULE], bearer(token(claims(sub=None))))
        assert result.metadata is not None
        assert (result.metadata["principal"], result.metadata["subject"]) == ("", "")

    async def test_metadata_is_one_object_per_cached_token(self, authn: JwtAuthenticator) -> None:
        """Every cache hit of a token, under any plan, hands on the same metadata object."""
        jwt = token(claims())
        first = await run(authn, [RULE], bearer(jwt))
        extra = JwtRule(issuer=OTHER, jwks=RULE.jwks, from_params=("t",))
        second = await run(authn, [RULE, extra], bearer(jwt))
        assert first.metadata is not None and second.metadata is first.metadata

    async def test_metadata_is_built_once_with_several_tokens(
        self, authn: JwtAuthenticator
    ) -> None:
        """With two tokens the answer is rebuilt per request, the metadata is not."""
        plan = compile_jwt_plan([RULE])
        req = bearer(token(claims(sub="a")), path=f"/api?access_token={token(claims(sub='b'))}")
        first = await authn.authenticate(plan, req)
        second = await authn.authenticate(plan, req)
        assert first.subject == "a" and first.metadata is not None
        assert second.metadata is first.metadata

    async def test_no_metadata_unless_ok(self, authn: JwtAuthenticator) -> None:
        """Missing and invalid tokens carry no metadata."""
        assert (await run(authn, [RULE], plain())).metadata is None
        assert (await run(authn, [RULE], bearer("x.y.z"))).metadata is None
