"""One token against one rule: jwt_verify_lib's checks, order and status strings.

Every check goes through the production path (a one-rule plan and
``JwtAuthenticator.authenticate``) with the key set under test handed in by a fake.
"""

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from services.authz.jwt import verify as v
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.jwks import JwkSet, parse_jwks
from services.authz.jwt.plan import compile_jwt_plan
from services.authz.jwt.rules import JwtRule
from services.authz.jwt.status import JwtVerifyError
from services.authz.model import HttpRequest
from services.clock import ManualClock
from tests.jwt_issuer import (
    ISSUER,
    NOW,
    b64url,
    claims,
    jwks,
    private_key,
    public_jwk,
    public_pem,
    signature,
    tampered,
    token,
)

ALL_KEYS = parse_jwks(jwks("rsa", "ec256", "ec384", "ec521", "ed25519", "hmac"))


class FixedKeys:
    """A key source that always answers with one key set (also when asked to refresh)."""

    def __init__(self, keys: JwkSet) -> None:
        self.set = keys

    async def keys(self, rule: JwtRule) -> JwkSet:
        return self.set

    async def refresh(self, rule: JwtRule) -> JwkSet:
        return self.set


def check(
    jwt: str,
    keys: JwkSet = ALL_KEYS,
    *,
    issuer: str = ISSUER,
    audiences: tuple[str, ...] = (),
    now: float = NOW,
    extra: tuple[str, ...] = (),
) -> v.VerifiedToken:
    """``jwt`` as a bearer token under one rule; raises the ``JwtVerifyError`` it got."""
    rule = JwtRule(issuer=issuer, audiences=audiences, space_delimited_claims=extra)
    authn = JwtAuthenticator(FixedKeys(keys), ManualClock(now))
    request = HttpRequest(host="api.example.com", headers={"authorization": f"Bearer {jwt}"})
    result = asyncio.run(authn.authenticate(compile_jwt_plan([rule]), request))
    if result.status != "ok":
        raise JwtVerifyError(result.body)
    (verified,) = result.tokens
    return verified


def status_of(jwt: str, keys: JwkSet = ALL_KEYS, **kwargs: Any) -> str:
    with pytest.raises(JwtVerifyError) as caught:
        check(jwt, keys, **kwargs)
    return caught.value.status


def raw(header: Any, payload: Any, sig: bytes = b"sig") -> str:
    """A token with arbitrary JSON sections (not signed)."""

    def part(value: Any) -> str:
        return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())

    return f"{part(header)}.{part(payload)}.{b64url(sig)}"


GOOD_HEADER = {"alg": "RS256", "kid": "rsa"}


class TestFormat:
    @pytest.mark.parametrize("jwt", ["", "abc", "a.b", "a.b.c.d", "a..c", ".b.c", "a.b."])
    def test_not_three_sections(self, jwt: str) -> None:
        """Anything but exactly three non-empty dot-separated sections is a format error."""
        assert status_of(jwt) == (
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        )

    def test_header_bad_base64(self) -> None:
        """A header that is not base64url is reported as such."""
        assert status_of("e+J9.e30.c2ln") == "Jwt header is an invalid Base64url encoded"
        assert status_of("eyJ h.e30.c2ln") == "Jwt header is an invalid Base64url encoded"

    def test_header_bad_json(self) -> None:
        """A header that decodes but is not a JSON object is an invalid JSON header."""
        assert status_of(raw(b"not json", {})) == "Jwt header is an invalid JSON"
        assert status_of(raw([1, 2], {})) == "Jwt header is an invalid JSON"

    @pytest.mark.parametrize("header", [{}, {"alg": 5}, {"alg": None}])
    def test_alg_missing_or_not_string(self, header: dict[str, Any]) -> None:
        """``alg`` is required and must be a string."""
        assert (
            status_of(raw(header, {})) == "Jwt header [alg] field is required and must be a string"
        )

    @pytest.mark.parametrize("alg", ["none", "None", "HS1", "RSA-OAEP", "ES256K", "Ed25519"])
    def test_alg_not_supported(self, alg: str) -> None:
        """``none`` and every algorithm outside the supported set are refused."""
        assert status_of(raw({"alg": alg}, claims())) == "Jwt header [alg] is not supported"

    def test_alg_none_token_is_refused(self) -> None:
        """A classic unsigned ``alg: none`` token never verifies."""
        unsigned = raw({"alg": "none", "typ": "JWT"}, claims()).rsplit(".", 1)[0] + ".AA"
        assert status_of(unsigned) == "Jwt header [alg] is not supported"

    def test_kid_not_string(self) -> None:
        """A non-string ``kid`` is a header error."""
        assert status_of(raw({"alg": "RS256", "kid": 7}, {})) == (
            "Jwt header [kid] field is not a string"
        )

    def test_payload_bad_base64_and_json(self) -> None:
        """The payload gets the same two checks as the header."""
        header = b64url(json.dumps(GOOD_HEADER).encode())
        assert status_of(f"{header}.e$30.c2ln") == "Jwt payload is an invalid Base64url encoded"
        assert status_of(raw(GOOD_HEADER, b"[1]")) == "Jwt payload is an invalid JSON"
        assert status_of(raw(GOOD_HEADER, b'{"exp": NaN}')) == "Jwt payload is an invalid JSON"

    @pytest.mark.parametrize(
        ("payload", "status"),
        [
            ({"iss": 1}, "Jwt payload [iss] field is not a string"),
            ({"sub": None}, "Jwt payload [sub] field is not a string"),
            ({"iat": "1"}, "Jwt payload [iat] field is not an integer"),
            ({"iat": -1}, "Jwt payload [iat] field is not a positive 64 bit integer"),
            ({"nbf": True}, "Jwt payload [nbf] field is not an integer"),
            ({"nbf": -5}, "Jwt payload [nbf] field is not a positive 64 bit integer"),
            ({"exp": [1]}, "Jwt payload [exp] field is not an integer"),
            ({"exp": 2**64}, "Jwt payload [exp] field is not a positive 64 bit integer"),
            ({"exp": 2.001e206}, "Jwt payload [exp] field is not a positive 64 bit integer"),
            ({"jti": 12}, "Jwt payload [jti] field is not a string"),
            ({"aud": 1}, "Jwt payload [aud] field is not a string or string list"),
            ({"aud": ["a", 2]}, "Jwt payload [aud] field is not a string or string list"),
        ],
    )
    def test_claim_types(self, payload: dict[str, Any], status: str) -> None:
        """Registered claims of the wrong type are parse errors with their own strings."""
        assert status_of(raw(GOOD_HEADER, payload)) == status

    def test_signature_bad_base64(self) -> None:
        """The signature section is decoded last."""
        good = token(claims())
        assert status_of(good + "*") == "Jwt signature is an invalid Base64url encoded"

    def test_parse_errors_come_before_issuer(self) -> None:
        """A malformed payload is reported even for an unknown issuer."""
        assert status_of(raw(GOOD_HEADER, {"iss": "x", "exp": "soon"})) == (
            "Jwt payload [exp] field is not an integer"
        )

    def test_fractional_times_are_truncated(self) -> None:
        """Numeric dates may be fractional; they are truncated like GetUInt64 does."""
        verified = check(token(claims(exp=NOW + 30.9, nbf=NOW - 0.5)))
        assert verified.expires_at == NOW + 30


class TestIssuer:
    def test_issuer_must_match(self) -> None:
        """A token from another issuer is "issuer not configured" before time is checked."""
        jwt = token(claims(iss="https://other.example.com", exp=int(NOW) - 10_000))
        assert status_of(jwt) == "Jwt issuer is not configured"

    def test_missing_iss_never_matches_a_configured_issuer(self) -> None:
        """A token without ``iss`` only passes a rule without an issuer."""
        jwt = token(claims(iss=None))
        assert status_of(jwt) == "Jwt issuer is not configured"
        assert check(jwt, issuer="").issuer == ""


class TestTime:
    def test_expiry_allows_sixty_seconds_of_skew(self) -> None:
        """``now > exp + 60`` is expired; exactly ``exp + 60`` still passes."""
        jwt = token(claims(exp=int(NOW) - 60))
        assert check(jwt).subject == "alice"
        assert status_of(token(claims(exp=int(NOW) - 61))) == "Jwt is expired"

    def test_not_before_allows_sixty_seconds_of_skew(self) -> None:
        """``now + 60 < nbf`` is not yet valid; ``nbf = now + 60`` passes."""
        assert check(token(claims(nbf=int(NOW) + 60))).subject == "alice"
        assert status_of(token(claims(nbf=int(NOW) + 61))) == "Jwt not yet valid"

    def test_missing_or_zero_exp_never_expires(self) -> None:
        """No ``exp`` (or ``exp: 0``) means no expiry."""
        far = NOW + 10 * 365 * 86400
        assert check(token(claims(exp=None)), now=far).expires_at is None
        assert check(token(claims(exp=0)), now=far).expires_at is None

    def test_iat_is_not_checked(self) -> None:
        """An ``iat`` in the future is accepted."""
        assert check(token(claims(iat=int(NOW) + 86400))).subject == "alice"

    def test_time_is_checked_before_signature(self) -> None:
        """An expired token with a bad signature reports expiry."""
        assert status_of(tampered(token(claims(exp=int(NOW) - 100)))) == "Jwt is expired"


class TestAudience:
    def test_empty_configuration_accepts_any_or_no_audience(self) -> None:
        """With no configured audiences the ``aud`` claim is not looked at."""
        assert check(token(claims(aud=None))).subject == "alice"
        assert check(token(claims(aud=["x", "y"]))).subject == "alice"

    @pytest.mark.parametrize(
        ("token_aud", "configured"),
        [
            ("api.example.com", "api.example.com"),
            ("https://api.example.com/", "api.example.com"),
            ("http://api.example.com", "https://api.example.com/"),
            (["other", "api.example.com/"], "http://api.example.com"),
        ],
    )
    def test_scheme_and_trailing_slash_are_ignored(self, token_aud: Any, configured: str) -> None:
        """``http://``, ``https://`` and a trailing ``/`` are stripped on both sides."""
        assert check(token(claims(aud=token_aud)), audiences=(configured,)).subject == "alice"

    def test_not_allowed_is_403(self) -> None:
        """A token without an allowed audience fails with the 403 status string."""
        with pytest.raises(JwtVerifyError) as caught:
            check(token(claims(aud="web.example.com")), audiences=("api.example.com",))
        assert caught.value.status == "Audiences in Jwt are not allowed"
        assert caught.value.http_status == 403
        assert status_of(token(claims(aud=None)), audiences=("api.example.com",)) == (
            "Audiences in Jwt are not allowed"
        )

    def test_other_failures_are_401(self) -> None:
        """Everything but the audience maps to 401."""
        assert JwtVerifyError("Jwt is expired").http_status == 401

    def test_audience_is_checked_before_signature(self) -> None:
        """A forged token for the wrong audience reports the audience."""
        forged = tampered(token(claims(aud="web")))
        assert status_of(forged, audiences=("api",)) == "Audiences in Jwt are not allowed"


ALGORITHMS = [
    ("rsa", "RS256"),
    ("rsa", "RS384"),
    ("rsa", "RS512"),
    ("rsa", "PS256"),
    ("rsa", "PS384"),
    ("rsa", "PS512"),
    ("ec256", "ES256"),
    ("ec384", "ES384"),
    ("ec521", "ES512"),
    ("ed25519", "EdDSA"),
    ("hmac", "HS256"),
    ("hmac", "HS384"),
    ("hmac", "HS512"),
]


class TestSignature:
    @pytest.mark.parametrize(("key", "alg"), ALGORITHMS)
    def test_valid_signature(self, key: str, alg: str) -> None:
        """Every supported algorithm verifies a correctly signed token."""
        assert check(token(claims(), key=key, alg=alg)).principal == f"{ISSUER}/alice"

    @pytest.mark.parametrize(("key", "alg"), ALGORITHMS)
    def test_tampered_payload(self, key: str, alg: str) -> None:
        """Changing the payload breaks every algorithm's signature."""
        assert status_of(tampered(token(claims(), key=key, alg=alg))) == "Jwt verification fails"

    def test_wrong_key_of_the_right_type(self) -> None:
        """A token signed by a key absent from the set fails verification."""
        jwt = token(claims(), key="rsa-2", kid=None)
        assert status_of(jwt, parse_jwks(jwks("rsa"))) == "Jwt verification fails"

    def test_rsa_public_key_is_never_an_hmac_secret(self) -> None:
        """HS256 signed with the RSA public key's bytes does not verify against that key."""
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64url(json.dumps(claims()).encode())
        secret = public_pem("rsa").encode()
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{body}.{b64url(mac)}"
        rsa_only = parse_jwks(jwks(public_jwk("rsa", kid=None)))
        assert status_of(forged, rsa_only) == "Jwt verification fails"
        assert status_of(forged, parse_jwks(public_pem("rsa"))) == "Jwt verification fails"

    def test_rs256_token_against_ec_key_fails_cleanly(self) -> None:
        """An algorithm the key type cannot do is a plain verification failure."""
        jwt = token(claims(), key="rsa", kid=None)
        assert status_of(jwt, parse_jwks(jwks(public_jwk("ec256", kid=None)))) == (
            "Jwt verification fails"
        )

    def test_ecdsa_der_signature_is_not_accepted(self) -> None:
        """ES256 signatures are raw r||s; a DER signature does not verify."""
        signing_input = token(claims(), key="ec256").rsplit(".", 1)[0]
        der = private_key("ec256").sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        assert status_of(f"{signing_input}.{b64url(der)}") == "Jwt verification fails"

    def test_ed25519_signature_length(self) -> None:
        """An EdDSA signature that is not 64 bytes has its own status."""
        signing_input = token(claims(), key="ed25519").rsplit(".", 1)[0]
        assert status_of(f"{signing_input}.{b64url(b'short')}") == (
            "Jwt ED25519 signature is wrong length"
        )


class TestKeySelection:
    def test_kid_selects_the_key(self) -> None:
        """With a ``kid`` on both sides only the key with that ``kid`` is used."""
        keys = parse_jwks(jwks("rsa", "rsa-2"))
        assert check(token(claims(), key="rsa-2"), keys).subject == "alice"
        mislabelled = token(claims(), key="rsa-2", kid="rsa")
        assert status_of(mislabelled, keys) == "Jwt verification fails"

    def test_unknown_kid(self) -> None:
        """A ``kid`` no key carries leaves no candidate key."""
        keys = parse_jwks(jwks("rsa", "rsa-2"))
        assert status_of(token(claims(), kid="rotated"), keys) == (
            "Jwks doesn't have key to match kid or alg from Jwt"
        )

    def test_token_without_kid_tries_every_key(self) -> None:
        """Without a ``kid`` every key is tried until one verifies."""
        keys = parse_jwks(jwks("rsa", "ec256", "rsa-2"))
        assert check(token(claims(), key="rsa-2", kid=None), keys).subject == "alice"

    def test_key_without_kid_matches_any_kid(self) -> None:
        """A key without a ``kid`` is a candidate for every token."""
        keys = parse_jwks(jwks(public_jwk("rsa", kid=None)))
        assert check(token(claims(), kid="whatever"), keys).subject == "alice"

    def test_jwk_alg_must_equal_token_alg(self) -> None:
        """A key declaring another ``alg`` is skipped."""
        keys = parse_jwks(jwks(public_jwk("rsa", alg="RS384")))
        assert status_of(token(claims()), keys) == (
            "Jwks doesn't have key to match kid or alg from Jwt"
        )
        assert check(token(claims(), alg="RS384"), keys).subject == "alice"


class TestJwks:
    def test_pem_public_keys(self) -> None:
        """A PEM public key (RSA, EC or Ed25519) is a one-key set without kid."""
        for name in ("rsa", "ec256", "ed25519"):
            keys = parse_jwks(public_pem(name))
            assert len(keys.keys) == 1 and keys.keys[0].kid == ""
            assert check(token(claims(), key=name), keys).subject == "alice"

    def test_x509_certificate_map(self) -> None:
        """A ``{kid: certificate}`` map yields RSA keys named by their kid."""
        key = private_key("rsa")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        pem = certificate.public_bytes(Encoding.PEM).decode()
        keys = parse_jwks(json.dumps({"rsa": pem}))
        assert [k.kid for k in keys.keys] == ["rsa"]
        assert check(token(claims()), keys).subject == "alice"

    @pytest.mark.parametrize(
        ("document", "error"),
        [
            ("{not json", "Jwks is an invalid JSON"),
            ('{"kid": "x"}', "Jwks does not have [keys] field"),
            ('{"keys": {}}', "[keys] in Jwks is not an array"),
            ('{"keys": []}', "Jwks doesn't have any valid public key"),
        ],
    )
    def test_unusable_documents(self, document: str, error: str) -> None:
        """Documents without usable keys are empty sets that say why."""
        parsed = parse_jwks(document)
        assert parsed.keys == () and error in parsed.errors

    def test_bad_keys_are_skipped(self) -> None:
        """Invalid entries are skipped with their reason; valid ones stay usable."""
        rsa_jwk = public_jwk("rsa")
        document = jwks(
            {"kty": "RSA", "n": rsa_jwk["n"], "e": b64url((17).to_bytes(1, "big"))},
            {**public_jwk("ec256"), "alg": "ES384"},
            {"kty": "oct", "k": ""},
            {"kid": "x"},
            {"kty": "XYZ"},
            {**rsa_jwk, "alg": "HS256"},
            {**public_jwk("ed25519"), "x": b64url(b"short")},
            rsa_jwk,
        )
        parsed = parse_jwks(document)
        assert [k.kid for k in parsed.keys] == ["rsa"]
        assert parsed.errors == (
            "Jwks RSA [n] or [e] field is missing or has a parse error",
            "[crv] field specified is not compatible with [alg] for an EC key",
            "Jwks Oct key is an invalid Base64",
            "[kty] is missing in [keys]",
            "[kty] is not supported in [keys]",
            "[alg] is not started with [RS] or [PS] for an RSA key",
            "Jwks OKP [x] field is wrong length.",
        )

    def test_ec_point_not_on_curve(self) -> None:
        """EC coordinates that are not a curve point are rejected."""
        bad = {**public_jwk("ec256"), "y": public_jwk("ec256")["x"]}
        assert parse_jwks(jwks(bad)).errors[0] == "Jwks EC [x] and [y] fields have a parse error."

    def test_ec_without_crv_or_alg_is_p256(self) -> None:
        """An EC key naming neither curve nor algorithm is taken as P-256."""
        jwk = public_jwk("ec256")
        del jwk["crv"]
        keys = parse_jwks(jwks(jwk))
        assert check(token(claims(), key="ec256"), keys).subject == "alice"


class TestClaims:
    def test_space_delimited_claims_are_split(self) -> None:
        """``scope``, ``permission`` and configured claims become word lists."""
        payload = claims(scope="read  write", permission="admin", roles="a b", other="x y")
        verified = check(token(payload), extra=("roles",))
        assert verified.claims["scope"] == ["read", "write"]
        assert verified.claims["permission"] == ["admin"]
        assert verified.claims["roles"] == ["a", "b"]
        assert verified.claims["other"] == "x y"

    def test_non_string_and_empty_claims_stay(self) -> None:
        """Lists, numbers and an empty string are left as they are."""
        verified = check(token(claims(scope=["a b"], permission="")))
        assert verified.claims["scope"] == ["a b"] and verified.claims["permission"] == ""

    def test_principal_and_payload(self) -> None:
        """The principal is ``iss/sub``; the raw payload section is kept verbatim."""
        jwt = token(claims())
        verified = check(jwt)
        assert verified.principal == f"{ISSUER}/alice"
        assert verified.raw_payload_b64 == jwt.split(".")[1]
        assert verified.expires_at == NOW + 3600

    def test_no_subject_no_principal(self) -> None:
        """A token without ``sub`` has no principal."""
        verified = check(token(claims(sub=None)))
        assert verified.principal is None and verified.subject is None

    def test_padded_sections_are_accepted(self) -> None:
        """Base64url sections may carry ``=`` padding."""
        header, payload, _ = token(claims(sub="ab")).split(".")
        padded = payload + "=" * (-len(payload) % 4)
        body = base64.urlsafe_b64decode(padded)
        assert json.loads(body)["sub"] == "ab"
        signing_input = f"{header}.{padded}".encode()
        resigned = f"{header}.{padded}.{b64url(signature('rsa', 'RS256', signing_input))}"
        assert check(resigned).subject == "ab"


class TestJwtVerifyLibOverPyJwt:
    def test_pss_salt_length_is_recovered(self) -> None:
        """A PS256 signature with a maximum-length salt verifies (BoringSSL recovers the salt
        length; PyJWT's PSS verifier would insist on the digest length)."""
        signing_input = token(claims(), alg="PS256").rsplit(".", 1)[0]
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
        sig = private_key("rsa").sign(signing_input.encode(), pss, hashes.SHA256())
        assert check(f"{signing_input}.{b64url(sig)}").subject == "alice"

    def test_ecdsa_signature_is_read_as_two_halves(self) -> None:
        """``r`` and ``s`` are the two halves whatever the length (``verifySignatureEC``):
        zero-padded halves verify, and a trailing odd byte is ignored."""
        jwt = token(claims(), key="ec256")
        signing_input, sig_b64 = jwt.rsplit(".", 1)
        raw_sig = base64.urlsafe_b64decode(sig_b64 + "==")
        padded = b"\0" + raw_sig[:32] + b"\0" + raw_sig[32:]
        assert check(f"{signing_input}.{b64url(padded)}").subject == "alice"
        assert check(f"{signing_input}.{b64url(raw_sig + b'x')}").subject == "alice"

    def test_ec_coordinates_of_any_length(self) -> None:
        """EC ``x``/``y`` with an extra leading zero byte still name the point (BoringSSL
        reads numbers; PyJWT alone wants exactly 32 bytes for P-256)."""
        jwk = public_jwk("ec256")
        for name in ("x", "y"):
            jwk[name] = b64url(b"\0" + base64.urlsafe_b64decode(jwk[name] + "=="))
        assert check(token(claims(), key="ec256"), parse_jwks(jwks(jwk))).subject == "alice"


class TestHeaderCache:
    def test_bounded_and_hot_headers_survive_a_flood(self) -> None:
        """A flood of distinct headers evicts the least recently used ones only: a header in
        regular use keeps its cached parse, and the cache never grows past its bound."""
        cache = v.HeaderCache(64)
        hot = b64url(json.dumps({"alg": "RS256", "kid": "hot"}).encode())
        kept = cache(hot)
        for i in range(4 * 64):
            cache(b64url(json.dumps({"alg": "RS256", "kid": f"k{i}"}).encode()))
            if i % 10 == 0:
                assert cache(hot) is kept
        assert len(cache) <= 64

    def test_cached_parse_is_immutable(self) -> None:
        """What the cache hands out is a tuple of strings: no caller can alter another's."""
        cache = v.HeaderCache()
        header = b64url(json.dumps({"alg": "ES256", "kid": "k", "x": [1]}).encode())
        assert cache(header) == ("ES256", "k")
        assert all(isinstance(part, str) for part in cache(header))

    def test_failures_are_not_kept(self) -> None:
        """A header that does not parse is refused every time and takes no room."""
        cache = v.HeaderCache()
        bad = b64url(b'{"alg": 1}')
        for _ in range(2):
            with pytest.raises(v.JwtVerifyError):
                cache(bad)
        assert len(cache) == 0
