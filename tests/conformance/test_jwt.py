"""RequestAuthentication through the gRPC API: token locations, every failure Envoy's
``jwt_authn`` reports (status, body, ``www-authenticate``), what a valid token changes
upstream, remote JWKS, and the verified claims as dynamic metadata (reference §0, §2).

The server's clock is ``NOW``; tokens are minted by ``tests.jwt_issuer`` for that instant.
"""

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    ABSENT,
    RBAC_DENIED,
    Case,
    allow,
    b64_json,
    bearer,
    deny,
    jwt_rule,
    params,
    request_authentication,
    rule,
    src,
    yaml_docs,
)
from tests.jwt_issuer import (
    ISSUER,
    NOW,
    JwksServer,
    b64url,
    claims,
    jwks,
    public_jwk,
    public_pem,
    tampered,
    token,
)

OTHER_ISSUER = "https://other.example.com"
RULE = jwt_rule(ISSUER, jwks=jwks("rsa"))
RA = request_authentication(RULE)
REQUIRE_PRINCIPAL = allow(rule(from_=src(requestPrincipals=["*"])), name="require-jwt")
GOOD = token()
NOW_S = int(NOW)


def with_ra(*documents, rule_fields=None):
    """The test RequestAuthentication (optionally with more rule fields) and ``documents``."""
    ra = request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"), **(rule_fields or {})))
    return yaml_docs(ra, *documents)


def get(headers=None, **more):
    return {"path": "/get", "headers": dict(headers or {}), **more}


def auth(value):
    return get({"authorization": value})


def unsigned(header, payload, signature="c2ln"):
    """A token with an arbitrary header (no real signature)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    return f"{head}.{body}.{signature}"


def hs256_with_rsa_public_key():
    """alg confusion: HS256 keyed with the RSA public key's PEM (kid of the RSA key)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa"}).encode())
    body = b64url(json.dumps(claims()).encode())
    mac = hmac.new(public_pem("rsa").encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{b64url(mac.digest())}"


def failure(name, bearer_token, body, status=401, policy=None, ref="§0, §2.3", **request):
    """A token Envoy refuses: status, jwt_verify_lib's string, and the challenge (whose
    realm is the original URI, query included)."""
    sent = {**get(bearer(bearer_token)), **request}
    challenge = f'Bearer realm="http://api.example.com{sent["path"][:256]}", error="invalid_token"'
    return Case(
        name,
        policy or with_ra(),
        sent,
        status,
        expect_body=body,
        expect_headers={"www-authenticate": challenge},
        ref=ref,
    )


FAILURE_CASES = [
    failure("expired (exp + 61 s)", token(claims(exp=NOW_S - 61)), "Jwt is expired"),
    failure("not yet valid (nbf - 61 s)", token(claims(nbf=NOW_S + 61)), "Jwt not yet valid"),
    failure(
        "issuer not configured",
        token(claims(iss=OTHER_ISSUER)),
        "Jwt issuer is not configured",
        ref="§2.1 CVE-2021-21378",
    ),
    failure(
        "token without iss",
        token(claims(iss=None)),
        "Jwt issuer is not configured",
        ref="§2.1 a token whose iss matches no rule",
    ),
    failure("signature does not verify", tampered(GOOD), "Jwt verification fails"),
    failure(
        "signed by another key with the same kid",
        token(key="rsa-2", kid="rsa"),
        "Jwt verification fails",
    ),
    failure(
        "no key with that kid",
        token(kid="unknown-kid"),
        "Jwks doesn't have key to match kid or alg from Jwt",
    ),
    failure(
        "JWK alg differs from the token alg",
        token(alg="RS384"),
        "Jwks doesn't have key to match kid or alg from Jwt",
        policy=yaml_docs(
            request_authentication(
                jwt_rule(ISSUER, jwks=json.dumps({"keys": [public_jwk("rsa", alg="RS256")]}))
            )
        ),
        ref="§2.3 a JWK with alg must equal the token's alg",
    ),
    failure(
        "HS256 with the RSA public key as secret",
        hs256_with_rsa_public_key(),
        "Jwt verification fails",
        ref="§2.3 kty decides the verification: no RSA-as-HMAC confusion",
    ),
    failure(
        "malformed: two sections",
        "abc.def",
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    ),
    failure(
        "malformed: not a JWT",
        "not-a-jwt",
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    ),
    failure(
        "alg none",
        unsigned({"alg": "none", "typ": "JWT"}, claims()),
        "Jwt header [alg] is not supported",
        ref="§2.3 none -> 401 'Jwt header [alg] is not supported'",
    ),
    failure(
        "alg none without a signature section",
        unsigned({"alg": "none"}, claims(), signature=""),
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ref="§2.3 parse: three base64url parts (jwt_verify_lib splits skipping empties)",
    ),
    failure(
        "exp not an integer",
        token(claims(exp="tomorrow")),
        "Jwt payload [exp] field is not an integer",
        ref="§2.3 parse: iat/nbf/exp positive integers",
    ),
    failure(
        "bad audience is 403",
        token(claims(aud="other.example.com")),
        "Audiences in Jwt are not allowed",
        status=403,
        policy=with_ra(rule_fields={"audiences": ["api.example.com"]}),
        ref="§0 audience not allowed -> 403",
    ),
    failure(
        "no aud with audiences configured is 403",
        token(claims(aud=None)),
        "Audiences in Jwt are not allowed",
        status=403,
        policy=with_ra(rule_fields={"audiences": ["api.example.com"]}),
        ref="§2.3 audiences",
    ),
    failure(
        "JWT is checked before RBAC",
        token(claims(exp=NOW_S - 3600)),
        "Jwt is expired",
        policy=with_ra(deny({}), allow({})),
        ref="§0 jwt_authn runs before RBAC",
    ),
    failure(
        "one of two tokens invalid",
        GOOD,
        "Jwt is expired",
        path=f"/get?access_token={token(claims(exp=NOW_S - 3600))}",
        ref="§2.3 multiple tokens: any invalid extracted token -> 401",
    ),
    Case(
        "realm keeps the query",
        with_ra(),
        {"path": "/get?x=1", "headers": bearer("not-a-jwt")},
        401,
        expect_headers={
            "www-authenticate": 'Bearer realm="http://api.example.com/get?x=1", '
            'error="invalid_token"'
        },
        ref="§0 realm = original URI",
    ),
    Case(
        "realm path is cut at 256 characters",
        with_ra(),
        {"path": "/" + "a" * 300, "headers": bearer("not-a-jwt"), "scheme": "https"},
        401,
        expect_headers={
            "www-authenticate": f'Bearer realm="https://api.example.com/{"a" * 255}", '
            'error="invalid_token"'
        },
        ref="§0 realm: original URI, max 256 chars",
    ),
]

ACCEPTED_CASES = [
    Case(
        "valid token: Authorization removed upstream",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(GOOD)),
        expect_removed=["authorization"],
        ref="§2.3 the token header is removed unless forwardOriginalToken",
    ),
    Case(
        "forwardOriginalToken keeps Authorization",
        with_ra(REQUIRE_PRINCIPAL, rule_fields={"forwardOriginalToken": True}),
        get(bearer(GOOD)),
        expect_kept=["authorization"],
        ref="§2.3",
    ),
    Case(
        "exp 59 s ago is inside the skew",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(token(claims(exp=NOW_S - 59)))),
        ref="§2.3 clock skew 60 s",
    ),
    Case(
        "nbf 59 s ahead is inside the skew",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(token(claims(nbf=NOW_S + 59)))),
        ref="§2.3 clock skew 60 s",
    ),
    Case(
        "no exp means no expiry",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(token(claims(exp=None)))),
        ref="§2.3 a missing exp means no expiry",
    ),
    Case(
        "audience matches after stripping scheme and trailing slash",
        with_ra(REQUIRE_PRINCIPAL, rule_fields={"audiences": ["https://api.example.com/"]}),
        get(bearer(token(claims(aud="api.example.com")))),
        ref="§2.3 audiences",
    ),
    Case(
        "one of several audiences",
        with_ra(REQUIRE_PRINCIPAL, rule_fields={"audiences": ["b.example.com"]}),
        get(bearer(token(claims(aud=["a.example.com", "b.example.com"])))),
        ref="§2.3 at least one token aud",
    ),
    Case(
        "empty audiences accept any aud",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(token(claims(aud="anything")))),
        ref="§2.3 empty list: any aud",
    ),
    Case(
        "outputPayloadToHeader",
        with_ra(rule_fields={"outputPayloadToHeader": "x-jwt-payload"}),
        get({**bearer(GOOD), "x-jwt-payload": "forged"}),
        expect_upstream_headers={"x-jwt-payload": GOOD.split(".")[1]},
        ref="§2.3 outputPayloadToHeader carries the base64url payload",
    ),
    Case(
        "outputClaimToHeaders: string, nested, bool, number, list",
        with_ra(
            rule_fields={
                "outputClaimToHeaders": [
                    {"header": "x-user", "claim": "sub"},
                    {"header": "x-org", "claim": "org.id"},
                    {"header": "x-admin", "claim": "admin"},
                    {"header": "x-level", "claim": "level"},
                    {"header": "x-groups", "claim": "groups"},
                ]
            }
        ),
        get(
            {
                **bearer(token(claims(org={"id": "acme"}, admin=True, level=3, groups=["a", "b"]))),
                "x-user": "mallory",
            }
        ),
        expect_upstream_headers={
            "x-user": "alice",
            "x-org": "acme",
            "x-admin": "true",
            "x-level": "3",
            "x-groups": b64_json(["a", "b"]),
        },
        ref="§2.3 outputClaimToHeaders",
    ),
    Case(
        "outputClaimToHeaders: client copy of an absent claim is stripped",
        with_ra(rule_fields={"outputClaimToHeaders": [{"header": "x-email", "claim": "email"}]}),
        get({**bearer(GOOD), "x-email": "admin@example.com"}),
        expect_removed=["x-email"],
        expect_upstream_headers={"x-email": ABSENT},
        ref="§2.3 Envoy first strips client-supplied copies",
    ),
    Case(
        "no token: client copies of output headers are stripped",
        with_ra(
            rule_fields={
                "outputPayloadToHeader": "x-jwt-payload",
                "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}],
            }
        ),
        get({"x-user": "admin", "x-jwt-payload": "eyJzdWIiOiJhZG1pbiJ9"}),
        expect_removed=["x-user", "x-jwt-payload"],
        ref="§2.3 Envoy first strips any client-supplied copies of these output headers",
    ),
    Case(
        "no token and no policy: allowed unauthenticated",
        with_ra(),
        get(),
        ref="§2.1 no token -> allowed",
    ),
    Case(
        "no token with requestPrincipals ['*'] required",
        with_ra(REQUIRE_PRINCIPAL),
        get(),
        403,
        expect_body=RBAC_DENIED,
        ref="§2.1 authorization must require a principal",
    ),
    Case(
        "no token with DENY notRequestPrincipals ['*']",
        with_ra(deny(rule(from_=src(notRequestPrincipals=["*"])))),
        get(),
        403,
        expect_body=RBAC_DENIED,
        ref="§2.1",
    ),
    Case(
        "lower-case 'bearer' is no token, not a bad one",
        with_ra(REQUIRE_PRINCIPAL),
        auth(f"bearer {GOOD}"),
        403,
        expect_body=RBAC_DENIED,
        ref="§2.2 prefix is case-sensitive; absent prefix = missing (#22608)",
    ),
    Case(
        "Basic credentials are no token",
        with_ra(),
        auth("Basic dXNlcjpwYXNz"),
        ref="§2.2",
    ),
    Case(
        "a bare token without prefix is no token",
        with_ra(),
        auth("not-a-jwt"),
        ref="§2.2",
    ),
    Case(
        "the prefix is searched anywhere in the value",
        with_ra(REQUIRE_PRINCIPAL),
        auth(f"Token Bearer {GOOD}"),
        ref="§2.2 prefix searched anywhere",
    ),
    Case(
        "access_token query parameter",
        with_ra(REQUIRE_PRINCIPAL),
        {"path": f"/get?a=1&access_token={GOOD}"},
        expect_query_removed=["access_token"],
        ref="§2.2 default locations; §2.3 a query-parameter token is removed",
    ),
    Case(
        "fromHeaders without prefix",
        with_ra(REQUIRE_PRINCIPAL, rule_fields={"fromHeaders": [{"name": "X-Jwt-Assertion"}]}),
        get({"x-jwt-assertion": GOOD}),
        expect_removed=["x-jwt-assertion"],
        ref="§2.2 fromHeaders",
    ),
    Case(
        "fromHeaders disables the default Authorization location",
        with_ra(rule_fields={"fromHeaders": [{"name": "x-jwt-assertion"}]}),
        auth("Bearer not-a-jwt"),
        ref="§2.2 any explicit location disables the defaults",
    ),
    Case(
        "fromHeaders with a prefix",
        with_ra(
            REQUIRE_PRINCIPAL,
            rule_fields={"fromHeaders": [{"name": "x-token", "prefix": "Token "}]},
        ),
        get({"x-token": f"Token {GOOD}"}),
        ref="§2.2",
    ),
    Case(
        "fromParams",
        with_ra(REQUIRE_PRINCIPAL, rule_fields={"fromParams": ["jwt"]}),
        {"path": f"/get?jwt={GOOD}"},
        expect_query_removed=["jwt"],
        ref="§2.2 fromParams",
    ),
    Case(
        "fromCookies: the cookie is kept",
        with_ra(REQUIRE_PRINCIPAL, rule_fields={"fromCookies": ["session"]}),
        get({"cookie": f"theme=dark; session={GOOD}"}),
        expect_kept=["cookie"],
        ref="§2.2 fromCookies; §2.3 cookies are not removed",
    ),
    Case(
        "the same valid token twice",
        with_ra(REQUIRE_PRINCIPAL),
        {"path": f"/get?access_token={GOOD}", "headers": bearer(GOOD)},
        ref="§2.3",
    ),
    Case(
        "two issuers: the second one's token",
        yaml_docs(
            request_authentication(
                jwt_rule(ISSUER, jwks=jwks("rsa")), jwt_rule(OTHER_ISSUER, jwks=jwks("ec256"))
            ),
            allow(rule(from_=src(requestPrincipals=[f"{OTHER_ISSUER}/*"]))),
        ),
        get(bearer(token(claims(iss=OTHER_ISSUER), key="ec256"))),
        ref="§2.1 one provider per rule",
    ),
    Case(
        "rules for the same issuer are ORed across RequestAuthentications",
        yaml_docs(
            request_authentication(
                jwt_rule(ISSUER, jwks=jwks("rsa"), audiences=["a.example.com"]), name="first"
            ),
            request_authentication(
                jwt_rule(ISSUER, jwks=jwks("ec256"), audiences=["b.example.com"]), name="second"
            ),
            REQUIRE_PRINCIPAL,
        ),
        get(bearer(token(claims(aud="b.example.com"), key="ec256"))),
        ref="§2.1 verify-policies-are-combined",
    ),
    Case(
        "valid token without sub never matches requestPrincipals ['*']",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(token(claims(sub=None)))),
        403,
        expect_body=RBAC_DENIED,
        ref="§2.4 (#59541)",
    ),
    Case(
        "a sub containing '/' cannot be matched exactly",
        with_ra(allow(rule(from_=src(requestPrincipals=[f"{ISSUER}/team/alice"])))),
        get(bearer(token(claims(sub="team/alice")))),
        403,
        ref="§2.4 (#52217)",
    ),
    Case(
        "CORS preflight skips JWT checks",
        with_ra(),
        {
            "method": "OPTIONS",
            "path": "/get",
            "headers": {
                "origin": "https://app.example.com",
                "access-control-request-method": "POST",
                "authorization": "Bearer not-a-jwt",
            },
        },
        ref="§2.1 BypassCorsPreflight: true",
    ),
    Case(
        "CORS preflight: RBAC still runs",
        with_ra(REQUIRE_PRINCIPAL),
        {
            "method": "OPTIONS",
            "path": "/get",
            "headers": {
                "origin": "https://app.example.com",
                "access-control-request-method": "POST",
                "authorization": f"Bearer {GOOD}",
            },
        },
        403,
        ref="§2.1 an OPTIONS preflight skips JWT entirely; RBAC still runs",
    ),
    Case(
        "OPTIONS without preflight headers is checked",
        with_ra(),
        {"method": "OPTIONS", "path": "/get", "headers": bearer("not-a-jwt")},
        401,
        ref="§2.1 BypassCorsPreflight needs Origin and Access-Control-Request-Method",
    ),
]


ALGORITHM_CASES = [
    Case(
        f"algorithm {alg} ({key} key)",
        yaml_docs(request_authentication(jwt_rule(ISSUER, jwks=jwks(key))), REQUIRE_PRINCIPAL),
        get(bearer(token(key=key, alg=alg))),
        ref="§2.3 supported algorithms",
    )
    for key, alg in [
        ("rsa", "RS256"),
        ("rsa", "RS384"),
        ("rsa", "RS512"),
        ("rsa", "PS256"),
        ("rsa", "PS384"),
        ("rsa", "PS512"),
        ("ec256", "ES256"),
        ("ec384", "ES384"),
        ("ec521", "ES512"),
        ("hmac", "HS256"),
        ("hmac", "HS384"),
        ("hmac", "HS512"),
        ("ed25519", "EdDSA"),
    ]
] + [
    Case(
        "JWKS as a PEM public key",
        yaml_docs(
            request_authentication(jwt_rule(ISSUER, jwks=public_pem("rsa"))), REQUIRE_PRINCIPAL
        ),
        get(bearer(GOOD)),
        ref="§2.3 JWKS may be JSON, PEM or X.509",
    ),
    Case(
        "token without kid tries every key",
        yaml_docs(
            request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa-2", "rsa"))), REQUIRE_PRINCIPAL
        ),
        get(bearer(token(kid=None))),
        ref="§2.3 without a kid, every key is tried",
    ),
    Case(
        "iat is not checked",
        with_ra(REQUIRE_PRINCIPAL),
        get(bearer(token(claims(iat=NOW_S + 86400)))),
        ref="§2.3 iat is not checked",
    ),
]

LOCATION_ISSUER_CASES = [
    Case(
        "a token at another issuer's location: issuer not configured",
        yaml_docs(
            request_authentication(
                jwt_rule(ISSUER, jwks=jwks("rsa"), fromHeaders=[{"name": "x-a"}]),
                jwt_rule(OTHER_ISSUER, jwks=jwks("ec256")),
            )
        ),
        get({"x-a": token(claims(iss=OTHER_ISSUER), key="ec256")}),
        401,
        expect_body="Jwt issuer is not configured",
        ref="§2.1 a token must validate against a rule whose issuer and location match",
    ),
    Case(
        "DENY notRequestPrincipals ['*'] denies a token without sub",
        with_ra(deny(rule(from_=src(notRequestPrincipals=["*"])))),
        get(bearer(token(claims(sub=None)))),
        403,
        expect_body=RBAC_DENIED,
        ref="§2.4 a token without sub never matches '*' (#59541)",
    ),
]


@pytest.mark.parametrize("case", params(ALGORITHM_CASES + LOCATION_ISSUER_CASES))
async def test_jwt_keys_and_issuers(authz: Launcher, case: Case) -> None:
    """Every supported algorithm and key format verifies; issuers are bound to locations."""
    await authz.run(case)


@pytest.mark.parametrize("case", params(FAILURE_CASES))
async def test_jwt_failure(authz: Launcher, case: Case) -> None:
    """Every token jwt_authn refuses: 401 (403 for audience) with its exact body."""
    await authz.run(case)


@pytest.mark.parametrize("case", params(ACCEPTED_CASES))
async def test_jwt_location_and_effects(authz: Launcher, case: Case) -> None:
    """Where tokens are found, what a valid one changes upstream, missing tokens."""
    await authz.run(case)


@pytest.fixture(name="jwks_server")
async def fixture_jwks_server() -> AsyncIterator[JwksServer]:
    server = await JwksServer(jwks("rsa")).start()
    yield server
    await server.close()


REMOTE_CASES = [
    Case(
        "jwksUri",
        "jwksUri",
        get(bearer(GOOD)),
        expect_removed=["authorization"],
        ref="§2.5",
    ),
    Case(
        "OIDC discovery on the issuer",
        "discovery",
        get(bearer("{discovery_token}")),
        ref="§2.5 jwksUri empty: OIDC discovery",
    ),
    Case(
        "JWKS fetch fails: fail closed",
        "failing",
        get(bearer(GOOD)),
        401,
        expect_body="Jwks remote fetch is failed",
        ref="§2.5 fail closed",
    ),
]


@pytest.mark.parametrize("case", params(REMOTE_CASES))
async def test_remote_jwks(authz: Launcher, jwks_server: JwksServer, case: Case) -> None:
    """Keys from jwksUri or OIDC discovery on the test JWKS server; a dead one fails closed."""
    if case.policy_yaml == "discovery":
        rule_ = jwt_rule(jwks_server.issuer)
        headers = bearer(token(claims(iss=jwks_server.issuer)))
        case = replace(case, request={**case.request, "headers": headers})
    else:
        rule_ = jwt_rule(ISSUER, jwksUri=jwks_server.jwks_uri)
        jwks_server.fail = case.policy_yaml == "failing"
    policy = yaml_docs(request_authentication(rule_), REQUIRE_PRINCIPAL)
    await authz.run(replace(case, policy_yaml=policy))
    assert jwks_server.jwks_fetches >= 1


async def test_claims_in_dynamic_metadata(authz: Launcher) -> None:
    """The verified principal and claims (scope split) go back as dynamic metadata."""
    server = await authz.start(with_ra())
    jwt = token(claims(scope="read write", groups=["a"], realm={"role": "x"}))
    outcome = await server.outcome(**get(bearer(jwt)))
    assert outcome.status == 200
    metadata = outcome.metadata
    assert metadata["principal"] == f"{ISSUER}/alice"
    assert metadata["issuer"] == ISSUER
    assert metadata["subject"] == "alice"
    found = metadata["claims"]
    assert found["scope"] == ["read", "write"]
    assert found["groups"] == ["a"]
    assert found["realm"] == {"role": "x"}
    assert found["sub"] == "alice"
    assert found["exp"] == NOW_S + 3600


async def test_no_metadata_without_token(authz: Launcher) -> None:
    """An anonymous request carries no principal metadata."""
    server = await authz.start(with_ra())
    outcome = await server.outcome(**get())
    assert outcome.status == 200
    assert "principal" not in outcome.metadata


def test_payload_header_is_the_token_section() -> None:
    """Self-check of the expectation used above: the payload section decodes to the claims."""
    section = GOOD.split(".")[1]
    decoded = json.loads(base64.urlsafe_b64decode(section + "=" * (-len(section) % 4)))
    assert decoded["sub"] == "alice"
