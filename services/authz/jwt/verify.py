"""Parsing and checking one JWT the way jwt_verify_lib does it, without I/O.

Sources (read through the search tool; jwt_verify_lib now lives in Envoy as
``source/common/jwt``):

* status strings: ``jwt_verify_lib/src/status.cc`` (``getStatusString``);
* parsing: ``src/jwt.cc`` ``Jwt::parseFromString`` - three base64url sections, header
  JSON with a string ``alg`` from the implemented set and an optional string ``kid``,
  payload JSON with optional string ``iss``/``sub``/``jti``, numeric ``iat``/``nbf``/
  ``exp`` (``StructUtils::GetUInt64``: a JSON number, not negative, below 2^64,
  truncated) and ``aud`` as a string or a list of strings; the signature last;
* time: ``Jwt::verifyTimeConstraint`` - ``now + skew < nbf`` is "not yet valid",
  ``exp != 0 && now > exp + skew`` is "expired"; skew 60 s (``kClockSkewInSecond``);
* audiences: ``check_audience.cc`` - an empty configured list allows anything;
  ``http://``/``https://`` and one trailing ``/`` are stripped on both sides;
* keys: ``src/jwks.cc`` (JWK Set, PEM, or a ``{kid: X.509 PEM}`` map) and
  ``src/verify.cc`` ``verifyJwtWithoutTimeChecking`` - a key is skipped when both it and
  the token have a ``kid`` and they differ, or when it has an ``alg`` other than the
  token's; the key's ``kty`` picks the verification (so an RSA key can never act as an
  HMAC secret) and the token's ``alg`` only the hash; no candidate at all is
  "Jwks doesn't have key to match kid or alg from Jwt", candidates that all fail is
  "Jwt verification fails".

Deliberate differences, all stricter: a token must have exactly two dots and three
non-empty sections (Envoy's inlined copy only skips empty sections); base64url
sections may not contain whitespace or other characters (absl skips whitespace).
"""

import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate

# --- jwt_verify_lib status strings (src/status.cc) -------------------------------------------

JWT_MISSED = "Jwt is missing"
JWT_NOT_YET_VALID = "Jwt not yet valid"
JWT_EXPIRED = "Jwt is expired"
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
JWT_HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
JWT_HEADER_BAD_JSON = "Jwt header is an invalid JSON"
JWT_HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
JWT_HEADER_NOT_IMPLEMENTED_ALG = "Jwt header [alg] is not supported"
JWT_HEADER_BAD_KID = "Jwt header [kid] field is not a string"
JWT_PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
JWT_PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
JWT_PAYLOAD_ISS_NOT_STRING = "Jwt payload [iss] field is not a string"
JWT_PAYLOAD_SUB_NOT_STRING = "Jwt payload [sub] field is not a string"
JWT_PAYLOAD_IAT_NOT_INTEGER = "Jwt payload [iat] field is not an integer"
JWT_PAYLOAD_IAT_OUT_OF_RANGE = "Jwt payload [iat] field is not a positive 64 bit integer"
JWT_PAYLOAD_NBF_NOT_INTEGER = "Jwt payload [nbf] field is not an integer"
JWT_PAYLOAD_NBF_OUT_OF_RANGE = "Jwt payload [nbf] field is not a positive 64 bit integer"
JWT_PAYLOAD_EXP_NOT_INTEGER = "Jwt payload [exp] field is not an integer"
JWT_PAYLOAD_EXP_OUT_OF_RANGE = "Jwt payload [exp] field is not a positive 64 bit integer"
JWT_PAYLOAD_JTI_NOT_STRING = "Jwt payload [jti] field is not a string"
JWT_PAYLOAD_AUD_NOT_STRING = "Jwt payload [aud] field is not a string or string list"
JWT_SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
JWT_ED25519_SIGNATURE_WRONG_LENGTH = "Jwt ED25519 signature is wrong length"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"
JWT_AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
JWT_VERIFICATION_FAIL = "Jwt verification fails"
JWKS_PARSE_ERROR = "Jwks is an invalid JSON"
JWKS_NO_KEYS = "Jwks does not have [keys] field"
JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"
JWKS_KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAIL = "Jwks remote fetch is failed"
JWKS_RSA_PARSE_ERROR = "Jwks RSA [n] or [e] field is missing or has a parse error"
JWKS_EC_X_OR_Y_BAD_BASE64 = "Jwks EC [x] or [y] field is an invalid Base64."
JWKS_EC_PARSE_ERROR = "Jwks EC [x] and [y] fields have a parse error."
JWKS_OCT_BAD_BASE64 = "Jwks Oct key is an invalid Base64"
JWKS_OKP_X_BAD_BASE64 = "Jwks OKP [x] field is an invalid Base64."
JWKS_OKP_X_WRONG_LENGTH = "Jwks OKP [x] field is wrong length."
JWKS_MISSING_KTY = "[kty] is missing in [keys]"
JWKS_BAD_KTY = "[kty] is bad in [keys]"
JWKS_NOT_IMPLEMENTED_KTY = "[kty] is not supported in [keys]"
JWKS_RSA_KEY_BAD_ALG = "[alg] is not started with [RS] or [PS] for an RSA key"
JWKS_RSA_KEY_MISSING_N = "[n] field is missing for a RSA key"
JWKS_RSA_KEY_BAD_N = "[n] field is not string for a RSA key"
JWKS_RSA_KEY_MISSING_E = "[e] field is missing for a RSA key"
JWKS_RSA_KEY_BAD_E = "[e] field is not string for a RSA key"
JWKS_EC_KEY_BAD_ALG = "[alg] is not started with [ES] for an EC key"
JWKS_EC_KEY_BAD_CRV = "[crv] field is not string for an EC key"
JWKS_EC_KEY_ALG_OR_CRV_UNSUPPORTED = "[crv] or [alg] field is not supported for an EC key"
JWKS_EC_KEY_ALG_NOT_COMPATIBLE_WITH_CRV = (
    "[crv] field specified is not compatible with [alg] for an EC key"
)
JWKS_EC_KEY_MISSING_X = "[x] field is missing for an EC key"
JWKS_EC_KEY_BAD_X = "[x] field is not string for an EC key"
JWKS_EC_KEY_MISSING_Y = "[y] field is missing for an EC key"
JWKS_EC_KEY_BAD_Y = "[y] field is not string for an EC key"
JWKS_HMAC_KEY_BAD_ALG = "[alg] does not start with [HS] for an HMAC key"
JWKS_HMAC_KEY_MISSING_K = "[k] field is missing for an HMAC key"
JWKS_HMAC_KEY_BAD_K = "[k] field is not string for an HMAC key"
JWKS_OKP_KEY_BAD_ALG = "[alg] is not [EdDSA] for an OKP key"
JWKS_OKP_KEY_MISSING_CRV = "[crv] field is missing for an OKP key"
JWKS_OKP_KEY_BAD_CRV = "[crv] field is not string for an OKP key"
JWKS_OKP_KEY_CRV_UNSUPPORTED = "[crv] field is not supported for an OKP key"
JWKS_OKP_KEY_MISSING_X = "[x] field is missing for an OKP key"
JWKS_OKP_KEY_BAD_X = "[x] field is not string for an OKP key"
JWKS_X509_PARSE_ERROR = "X509 parse pubkey fails"
JWKS_X509_GET_PUBKEY_ERROR = "X509 parse pubkey internal fails: get pubkey"
JWKS_PEM_NOT_IMPLEMENTED_KTY = "PEM Key type is not supported"
JWKS_PEM_BAD_BASE64 = "PEM pubkey parse fails"

CLOCK_SKEW_SECONDS = 60  # kClockSkewInSecond; Istio never sets clock_skew_seconds
DEFAULT_SPACE_DELIMITED_CLAIMS = ("scope", "permission")  # Istio's normalize_payload_in_metadata

SUPPORTED_ALGS = frozenset(
    {"ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"}
    | {"PS256", "PS384", "PS512", "EdDSA"}
)

_UINT64_LIMIT = float(2**64)
_X509_PREFIX = "-----BEGIN CERTIFICATE-----\n"
_X509_SUFFIX = "\n-----END CERTIFICATE-----\n"


class JwtVerifyError(Exception):
    """A token failed a check; ``status`` is jwt_verify_lib's string for it."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail

    @property
    def http_status(self) -> int:
        """403 for a bad audience, 401 for everything else (Envoy ``Filter::onComplete``)."""
        return 403 if self.status == JWT_AUDIENCE_NOT_ALLOWED else 401


# --- tokens ------------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~2 us more to build
class ParsedJwt:
    """A syntactically valid token; nothing about it is trusted yet. Do not mutate."""

    alg: str
    kid: str  # "" when absent
    header: dict[str, Any]
    payload: dict[str, Any]
    issuer: str  # "" when absent
    subject: str | None
    audiences: tuple[str, ...]
    exp: int  # 0 when absent (no expiry, as in jwt_verify_lib)
    nbf: int  # 0 when absent
    signing_input: bytes
    signature: bytes
    payload_b64: str


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check for one rule.

    ``claims`` is the payload with the space-delimited claims split into lists (what
    Envoy stores as dynamic metadata); treat it as read-only, it is cached and shared.
    """

    issuer: str
    subject: str | None
    claims: dict[str, Any]
    principal: str | None  # iss + "/" + sub, only when sub is present
    expires_at: float | None  # exp, or None when the token never expires
    raw_payload_b64: str  # the payload section exactly as in the token


# base64url -> standard alphabet; "+" and "/" (not base64url) become "!", which strict
# decoding rejects along with every other character outside the alphabet.
_B64URL_TO_STD = bytes.maketrans(b"-_+/", b"+/!!")
_PADDING = (b"", b"", b"==", b"=")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded (or correctly padded) base64url; ValueError on anything else."""
    std = segment.encode("ascii").translate(_B64URL_TO_STD)
    return binascii.a2b_base64(std + _PADDING[len(std) % 4], strict_mode=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # NaN/Infinity are not JSON


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = _JSON.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


_header_cache: dict[str, tuple[str, str, dict[str, Any]]] = {}
_HEADER_CACHE_SIZE = 512


def _parse_header(segment: str) -> tuple[str, str, dict[str, Any]]:
    cached = _header_cache.get(segment)
    if cached is not None:
        return cached
    try:
        raw = b64url_decode(segment)
    except ValueError:
        raise JwtVerifyError(JWT_HEADER_BAD_BASE64) from None
    header = _json_object(raw)
    if header is None:
        raise JwtVerifyError(JWT_HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtVerifyError(JWT_HEADER_BAD_ALG)
    if alg not in SUPPORTED_ALGS:
        raise JwtVerifyError(JWT_HEADER_NOT_IMPLEMENTED_ALG)
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise JwtVerifyError(JWT_HEADER_BAD_KID)
    parsed = (alg, kid, header)
    if len(_header_cache) >= _HEADER_CACHE_SIZE:
        _header_cache.clear()
    _header_cache[segment] = parsed
    return parsed


def _uint64(payload: dict[str, Any], name: str, not_integer: str, out_of_range: str) -> int:
    value = payload.get(name)
    if value is None and name not in payload:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtVerifyError(not_integer)
    number = float(value)
    if number < 0 or number >= _UINT64_LIMIT:
        raise JwtVerifyError(out_of_range)
    return int(number)


def parse_jwt(token: str) -> ParsedJwt:
    """Split, decode and type-check a token (``Jwt::parseFromString``); raises
    ``JwtVerifyError`` with the first problem found."""
    parts = token.split(".")
    if len(parts) != 3 or not (parts[0] and parts[1] and parts[2]):
        raise JwtVerifyError(JWT_BAD_FORMAT)
    header_b64, payload_b64, signature_b64 = parts
    alg, kid, header = _parse_header(header_b64)
    try:
        raw_payload = b64url_decode(payload_b64)
    except ValueError:
        raise JwtVerifyError(JWT_PAYLOAD_BAD_BASE64) from None
    payload = _json_object(raw_payload)
    if payload is None:
        raise JwtVerifyError(JWT_PAYLOAD_BAD_JSON)
    issuer = payload.get("iss", "")
    if not isinstance(issuer, str):
        raise JwtVerifyError(JWT_PAYLOAD_ISS_NOT_STRING)
    subject = payload.get("sub")
    if (subject is not None or "sub" in payload) and not isinstance(subject, str):
        raise JwtVerifyError(JWT_PAYLOAD_SUB_NOT_STRING)
    _uint64(payload, "iat", JWT_PAYLOAD_IAT_NOT_INTEGER, JWT_PAYLOAD_IAT_OUT_OF_RANGE)
    nbf = _uint64(payload, "nbf", JWT_PAYLOAD_NBF_NOT_INTEGER, JWT_PAYLOAD_NBF_OUT_OF_RANGE)
    exp = _uint64(payload, "exp", JWT_PAYLOAD_EXP_NOT_INTEGER, JWT_PAYLOAD_EXP_OUT_OF_RANGE)
    if "jti" in payload and not isinstance(payload["jti"], str):
        raise JwtVerifyError(JWT_PAYLOAD_JTI_NOT_STRING)
    audiences: tuple[str, ...] = ()
    if "aud" in payload:
        aud = payload["aud"]
        if isinstance(aud, str):
            audiences = (aud,)
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            audiences = tuple(aud)
        else:
            raise JwtVerifyError(JWT_PAYLOAD_AUD_NOT_STRING)
    try:
        signature = b64url_decode(signature_b64)
    except ValueError:
        raise JwtVerifyError(JWT_SIGNATURE_BAD_BASE64) from None
    return ParsedJwt(
        alg=alg,
        kid=kid,
        header=header,
        payload=payload,
        issuer=issuer,
        subject=subject,
        audiences=audiences,
        exp=exp,
        nbf=nbf,
        signing_input=token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii"),
        signature=signature,
        payload_b64=payload_b64,
    )


def check_time(jwt: ParsedJwt, now: float, skew: int = CLOCK_SKEW_SECONDS) -> None:
    """``nbf``/``exp`` with the clock skew; ``iat`` is never checked."""
    seconds = int(now)
    if seconds + skew < jwt.nbf:
        raise JwtVerifyError(JWT_NOT_YET_VALID)
    if jwt.exp and seconds > jwt.exp + skew:
        raise JwtVerifyError(JWT_EXPIRED)


def sanitize_audience(audience: str) -> str:
    """Drop an ``http://``/``https://`` prefix and one trailing ``/`` (check_audience.cc)."""
    if not audience:
        return audience
    start = 0
    if audience.startswith("http://"):
        start = 7
    elif audience.startswith("https://"):
        start = 8
    end = len(audience) - 1 if audience.endswith("/") else len(audience)
    return audience[start:end]


def audience_checker(configured: Iterable[str]) -> frozenset[str]:
    """The sanitized configured audiences; empty means "any audience, or none"."""
    return frozenset(sanitize_audience(a) for a in configured)


def check_audience(jwt: ParsedJwt, allowed: frozenset[str]) -> None:
    """At least one token audience must be allowed, unless ``allowed`` is empty."""
    if not allowed:
        return
    for audience in jwt.audiences:
        if sanitize_audience(audience) in allowed:
            return
    raise JwtVerifyError(JWT_AUDIENCE_NOT_ALLOWED)


def space_delimited(payload: dict[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """The payload with ``scope``, ``permission`` and ``extra`` string claims replaced by
    the list of their space-separated words (Envoy ``setPayloadMetadata``: split on
    ``' '``, empty words skipped, a claim with no words is left as it was)."""
    claims = payload
    for name in (*DEFAULT_SPACE_DELIMITED_CLAIMS, *extra):
        value = claims.get(name)
        if not isinstance(value, str):
            continue
        words = [word for word in value.split(" ") if word]
        if not words:
            continue
        if claims is payload:
            claims = dict(payload)
        claims[name] = words
    return claims


def verified_token(jwt: ParsedJwt, extra_space_delimited: Iterable[str] = ()) -> VerifiedToken:
    """The result handed to authorization once every check passed."""
    subject = jwt.subject
    return VerifiedToken(
        issuer=jwt.issuer,
        subject=subject,
        claims=space_delimited(jwt.payload, extra_space_delimited),
        principal=f"{jwt.issuer}/{subject}" if subject is not None else None,
        expires_at=float(jwt.exp) if jwt.exp else None,
        raw_payload_b64=jwt.payload_b64,
    )


# --- keys ----------------------------------------------------------------------------------------

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | bytes


@dataclass(frozen=True, slots=True)
class Jwk:
    """One usable key: ``kty`` decides how it verifies; ``kid``/``alg`` only select it."""

    kty: str  # "RSA", "EC", "oct" or "OKP"
    key: PublicKey
    kid: str = ""
    alg: str = ""
    crv: str = ""


@dataclass(frozen=True, slots=True)
class JwkSet:
    """The usable keys of one JWKS, and why anything was rejected (for logs)."""

    keys: tuple[Jwk, ...]
    errors: tuple[str, ...] = ()

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(k.kid for k in self.keys if k.kid)


_EC_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_EC_ALG_CRV = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_PEM_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class _KeyError(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _string_field(jwk: dict[str, Any], name: str, missing: str, wrong: str) -> str:
    if name not in jwk:
        raise _KeyError(missing)
    value = jwk[name]
    if not isinstance(value, str):
        raise _KeyError(wrong)
    return value


def _b64_int(text: str) -> int | None:
    try:
        return int.from_bytes(b64url_decode(text), "big")
    except ValueError:
        return None


def _rsa_jwk(jwk: dict[str, Any], kid: str, alg: str) -> Jwk:
    if alg and not alg.startswith(("RS", "PS")):
        raise _KeyError(JWKS_RSA_KEY_BAD_ALG)
    n_text = _string_field(jwk, "n", JWKS_RSA_KEY_MISSING_N, JWKS_RSA_KEY_BAD_N)
    e_text = _string_field(jwk, "e", JWKS_RSA_KEY_MISSING_E, JWKS_RSA_KEY_BAD_E)
    n, e = _b64_int(n_text), _b64_int(e_text)
    if n is None or e is None or e not in (3, 65537):
        raise _KeyError(JWKS_RSA_PARSE_ERROR)
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise _KeyError(JWKS_RSA_PARSE_ERROR) from None
    return Jwk("RSA", key, kid, alg)


def _ec_jwk(jwk: dict[str, Any], kid: str, alg: str) -> Jwk:
    if alg and not alg.startswith("ES"):
        raise _KeyError(JWKS_EC_KEY_BAD_ALG)
    crv = jwk.get("crv", "")
    if not isinstance(crv, str):
        raise _KeyError(JWKS_EC_KEY_BAD_CRV)
    if alg and crv and _EC_ALG_CRV.get(alg) != crv:
        raise _KeyError(JWKS_EC_KEY_ALG_NOT_COMPATIBLE_WITH_CRV)
    if not alg and not crv:
        crv = "P-256"
    if alg in _EC_ALG_CRV:
        crv = _EC_ALG_CRV[alg]
    curve = _EC_CURVES.get(crv)
    if curve is None:
        raise _KeyError(JWKS_EC_KEY_ALG_OR_CRV_UNSUPPORTED)
    x_text = _string_field(jwk, "x", JWKS_EC_KEY_MISSING_X, JWKS_EC_KEY_BAD_X)
    y_text = _string_field(jwk, "y", JWKS_EC_KEY_MISSING_Y, JWKS_EC_KEY_BAD_Y)
    x, y = _b64_int(x_text), _b64_int(y_text)
    if x is None or y is None:
        raise _KeyError(JWKS_EC_X_OR_Y_BAD_BASE64)
    try:
        key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    except ValueError:
        raise _KeyError(JWKS_EC_PARSE_ERROR) from None
    return Jwk("EC", key, kid, alg, crv)


def _oct_jwk(jwk: dict[str, Any], kid: str, alg: str) -> Jwk:
    if alg and alg not in ("HS256", "HS384", "HS512"):
        raise _KeyError(JWKS_HMAC_KEY_BAD_ALG)
    k_text = _string_field(jwk, "k", JWKS_HMAC_KEY_MISSING_K, JWKS_HMAC_KEY_BAD_K)
    try:
        secret = b64url_decode(k_text)
    except ValueError:
        secret = b""
    if not secret:
        raise _KeyError(JWKS_OCT_BAD_BASE64)
    return Jwk("oct", secret, kid, alg)


def _okp_jwk(jwk: dict[str, Any], kid: str, alg: str) -> Jwk:
    if alg and alg != "EdDSA":
        raise _KeyError(JWKS_OKP_KEY_BAD_ALG)
    crv = _string_field(jwk, "crv", JWKS_OKP_KEY_MISSING_CRV, JWKS_OKP_KEY_BAD_CRV)
    if crv != "Ed25519":
        raise _KeyError(JWKS_OKP_KEY_CRV_UNSUPPORTED)
    x_text = _string_field(jwk, "x", JWKS_OKP_KEY_MISSING_X, JWKS_OKP_KEY_BAD_X)
    try:
        raw = b64url_decode(x_text)
    except ValueError:
        raise _KeyError(JWKS_OKP_X_BAD_BASE64) from None
    if len(raw) != 32:
        raise _KeyError(JWKS_OKP_X_WRONG_LENGTH)
    return Jwk("OKP", ed25519.Ed25519PublicKey.from_public_bytes(raw), kid, alg, crv)


_JWK_PARSERS: dict[str, Callable[[dict[str, Any], str, str], Jwk]] = {
    "RSA": _rsa_jwk,
    "EC": _ec_jwk,
    "oct": _oct_jwk,
    "OKP": _okp_jwk,
}


def parse_jwk(jwk: dict[str, Any]) -> Jwk:
    """One JWK (``extractJwk``); raises ``ValueError`` carrying the status string."""
    try:
        kty = _string_field(jwk, "kty", JWKS_MISSING_KTY, JWKS_BAD_KTY)
        kid = jwk.get("kid", "")
        alg = jwk.get("alg", "")
        parser = _JWK_PARSERS.get(kty)
        if parser is None:
            raise _KeyError(JWKS_NOT_IMPLEMENTED_KTY)
        return parser(jwk, kid if isinstance(kid, str) else "", alg if isinstance(alg, str) else "")
    except _KeyError as exc:
        raise ValueError(exc.status) from None


def _pem_key(text: str) -> Jwk:
    try:
        key = load_pem_public_key(text.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm):
        raise _KeyError(JWKS_PEM_BAD_BASE64) from None
    if isinstance(key, rsa.RSAPublicKey):
        return Jwk("RSA", key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return Jwk("EC", key, crv=_PEM_CURVES.get(key.curve.name, key.curve.name))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return Jwk("OKP", key, crv="Ed25519")
    raise _KeyError(JWKS_PEM_NOT_IMPLEMENTED_KTY)


def _x509_key(kid: str, pem: str) -> Jwk:
    try:
        certificate = load_pem_x509_certificate(pem.encode("utf-8"))
    except ValueError:
        raise _KeyError(JWKS_X509_PARSE_ERROR) from None
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise _KeyError(JWKS_X509_GET_PUBKEY_ERROR)
    return Jwk("RSA", key, kid)


def parse_jwks(text: str) -> JwkSet:
    """A JWK Set, a PEM public key, or a ``{"kid": "<X.509 PEM>"}`` map (jwks.cc).

    Keys that fail to parse are skipped (their reasons land in ``errors``); an empty
    ``keys`` means the set is unusable.
    """
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            return JwkSet((_pem_key(stripped),))
        except _KeyError as exc:
            return JwkSet((), (exc.status,))
    document = _json_object(text.encode("utf-8", "surrogatepass"))
    if document is None:
        return JwkSet((), (JWKS_PARSE_ERROR,))
    if "keys" not in document:
        if document and all(
            k and isinstance(v, str) and v.startswith(_X509_PREFIX) and v.endswith(_X509_SUFFIX)
            for k, v in document.items()
        ):
            try:
                return JwkSet(tuple(_x509_key(k, v) for k, v in document.items()))
            except _KeyError as exc:
                return JwkSet((), (exc.status,))
        return JwkSet((), (JWKS_NO_KEYS,))
    entries = document["keys"]
    if not isinstance(entries, list):
        return JwkSet((), (JWKS_BAD_KEYS,))
    keys: list[Jwk] = []
    errors: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            keys.append(parse_jwk(entry))
        except ValueError as exc:
            errors.append(str(exc))
    if not keys:
        errors.append(JWKS_NO_VALID_KEYS)
    return JwkSet(tuple(keys), tuple(errors))


# --- signatures ----------------------------------------------------------------------------------

_SHA256, _SHA384, _SHA512 = hashes.SHA256(), hashes.SHA384(), hashes.SHA512()
_PKCS1 = padding.PKCS1v15()
_PSS = {
    h.name: padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO)
    for h in (_SHA256, _SHA384, _SHA512)
}
_ECDSA = {h.name: ec.ECDSA(h) for h in (_SHA256, _SHA384, _SHA512)}
_HMAC_DIGEST = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _rsa_hash(alg: str) -> hashes.HashAlgorithm:
    if alg in ("RS384", "PS384"):
        return _SHA384
    if alg in ("RS512", "PS512"):
        return _SHA512
    return _SHA256


def _ec_hash(alg: str) -> hashes.HashAlgorithm:
    if alg == "ES384":
        return _SHA384
    if alg == "ES512":
        return _SHA512
    return _SHA256


def _verify_with(jwk: Jwk, jwt: ParsedJwt) -> bool:
    alg, signature, data, key = jwt.alg, jwt.signature, jwt.signing_input, jwk.key
    try:
        if jwk.kty == "RSA" and isinstance(key, rsa.RSAPublicKey):
            digest = _rsa_hash(alg)
            if alg.startswith("RS"):
                key.verify(signature, data, _PKCS1, digest)
                return True
            if alg.startswith("PS"):
                key.verify(signature, data, _PSS[digest.name], digest)
                return True
            return False
        if jwk.kty == "EC" and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(signature) // 2
            r = int.from_bytes(signature[:half], "big")
            s = int.from_bytes(signature[half : 2 * half], "big")
            key.verify(encode_dss_signature(r, s), data, _ECDSA[_ec_hash(alg).name])
            return True
        if jwk.kty == "oct" and isinstance(key, bytes):
            mac = hmac.new(key, data, _HMAC_DIGEST.get(alg, hashlib.sha256)).digest()
            return hmac.compare_digest(mac, signature)
        if jwk.kty == "OKP" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def check_signature(jwt: ParsedJwt, keys: JwkSet) -> None:
    """Try every candidate key (``verifyJwtWithoutTimeChecking``)."""
    matched = False
    kid, alg = jwt.kid, jwt.alg
    for jwk in keys.keys:
        if kid and jwk.kid and jwk.kid != kid:
            continue
        if jwk.alg and jwk.alg != alg:
            continue
        matched = True
        if jwk.kty == "OKP" and len(jwt.signature) != 64:
            raise JwtVerifyError(JWT_ED25519_SIGNATURE_WRONG_LENGTH)
        if _verify_with(jwk, jwt):
            return
    raise JwtVerifyError(JWT_VERIFICATION_FAIL if matched else JWKS_KID_ALG_MISMATCH)


def issuer_allowed(rule_issuer: str, jwt: ParsedJwt) -> bool:
    """Envoy's ``JwtIssuerChecker``: an empty configured issuer allows any."""
    return not rule_issuer or rule_issuer == jwt.issuer


def verify_jwt(
    token: str | ParsedJwt,
    *,
    issuer: str,
    audiences: Iterable[str],
    keys: JwkSet,
    now: float,
    space_delimited_claims: Iterable[str] = (),
) -> VerifiedToken:
    """Every check for one rule, in jwt_verify_lib's order: parse, issuer, time,
    audience, signature. Raises ``JwtVerifyError``."""
    jwt = parse_jwt(token) if isinstance(token, str) else token
    if not issuer_allowed(issuer, jwt):
        raise JwtVerifyError(JWT_UNKNOWN_ISSUER)
    check_time(jwt, now)
    check_audience(jwt, audience_checker(audiences))
    check_signature(jwt, keys)
    return verified_token(jwt, space_delimited_claims)
