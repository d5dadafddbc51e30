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
* keys (parsed by ``services.authz.jwt.jwks``, as ``src/jwks.cc`` does) and
  ``src/verify.cc`` ``verifyJwtWithoutTimeChecking`` - a key is skipped when both it and
  the token have a ``kid`` and they differ, or when it has an ``alg`` other than the
  token's; the key's ``kty`` picks the verification (so an RSA key can never act as an
  HMAC secret) and the token's ``alg`` only the hash; no candidate at all is
  "Jwks doesn't have key to match kid or alg from Jwt", candidates that all fail is
  "Jwt verification fails". Per ``kty``: RSA verifies ``RS*`` with PKCS#1 v1.5 and
  ``PS*`` with PSS (salt length recovered from the signature, BoringSSL's default) and
  nothing else; EC hashes with SHA-384/512 for ``ES384``/``ES512``, SHA-256 for any
  other ``alg``, and reads ``r``/``s`` as the two halves of the signature whatever its
  length (``verifySignatureEC``); ``oct`` is HMAC with the same hash choice; OKP is
  Ed25519, where a signature that is not 64 bytes ends the search with its own status.

The checks are composed in one place, ``JwtAuthenticator`` (``authenticate.py``): it
needs the rules of the token's location for the issuer step and fetches keys only
once the audience passed.

Signatures: ``oct`` and OKP keys verify through PyJWT's ``HMACAlgorithm``/
``OKPAlgorithm``. RSA and EC verify with the ``cryptography`` key PyJWT's ``from_jwk``
built, called directly: measured with ``loadtest/jwt_verify_bench.py``, PyJWT's
``RSAAlgorithm.verify``/``ECAlgorithm.verify`` add 0.2-1.2 us per call (padding and
hash objects made per call, an extra DER conversion), against a gate of "no slower";
and its ``RSAPSSAlgorithm`` insists on a digest-length salt and its ``ECAlgorithm`` on
an exact signature length, both stricter than jwt_verify_lib.

Deliberate differences, all stricter: a token must have exactly two dots and three
non-empty sections (Envoy's inlined copy only skips empty sections); base64url
sections may not contain whitespace or other characters (absl skips whitespace).
"""

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import HMACAlgorithm, OKPAlgorithm

from services.authz.jwt.jwks import Jwk, JwkSet, b64url_decode, json_object
from services.authz.jwt.status import (
    _UINT64_LIMIT,
    CLOCK_SKEW_SECONDS,
    DEFAULT_SPACE_DELIMITED_CLAIMS,
    JWKS_KID_ALG_MISMATCH,
    JWT_AUDIENCE_NOT_ALLOWED,
    JWT_BAD_FORMAT,
    JWT_ED25519_SIGNATURE_WRONG_LENGTH,
    JWT_EXPIRED,
    JWT_HEADER_BAD_ALG,
    JWT_HEADER_BAD_BASE64,
    JWT_HEADER_BAD_JSON,
    JWT_HEADER_BAD_KID,
    JWT_HEADER_NOT_IMPLEMENTED_ALG,
    JWT_NOT_YET_VALID,
    JWT_PAYLOAD_AUD_NOT_STRING,
    JWT_PAYLOAD_BAD_BASE64,
    JWT_PAYLOAD_BAD_JSON,
    JWT_PAYLOAD_EXP_NOT_INTEGER,
    JWT_PAYLOAD_EXP_OUT_OF_RANGE,
    JWT_PAYLOAD_IAT_NOT_INTEGER,
    JWT_PAYLOAD_IAT_OUT_OF_RANGE,
    JWT_PAYLOAD_ISS_NOT_STRING,
    JWT_PAYLOAD_JTI_NOT_STRING,
    JWT_PAYLOAD_NBF_NOT_INTEGER,
    JWT_PAYLOAD_NBF_OUT_OF_RANGE,
    JWT_PAYLOAD_SUB_NOT_STRING,
    JWT_SIGNATURE_BAD_BASE64,
    JWT_VERIFICATION_FAIL,
    SUPPORTED_ALGS,
    JwtVerifyError,
)

# --- tokens ------------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~2 us more to build
class ParsedJwt:
    """A syntactically valid token; nothing about it is trusted yet. Do not mutate."""

    alg: str
    kid: str  # "" when absent
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


HEADER_CACHE_SIZE = 512


def _json_section(segment: str, bad_base64: str, bad_json: str) -> dict[str, Any]:
    """A base64url JSON-object section of a token; the statuses say which section failed."""
    try:
        raw = b64url_decode(segment)
    except ValueError:
        raise JwtVerifyError(bad_base64) from None
    found = json_object(raw)
    if found is None:
        raise JwtVerifyError(bad_json)
    return found


def parse_header(segment: str) -> tuple[str, str]:
    """``(alg, kid)`` of a header section; raises ``JwtVerifyError`` with the first problem."""
    header = _json_section(segment, JWT_HEADER_BAD_BASE64, JWT_HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtVerifyError(JWT_HEADER_BAD_ALG)
    if alg not in SUPPORTED_ALGS:
        raise JwtVerifyError(JWT_HEADER_NOT_IMPLEMENTED_ALG)
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise JwtVerifyError(JWT_HEADER_BAD_KID)
    return alg, kid


class HeaderCache:
    """``parse_header`` with its answers kept, least recently used evicted first.

    Issuers reuse a handful of headers, so a fresh token's header is usually parsed
    already. One cache per ``JwtAuthenticator`` (none module-wide), built on
    ``functools.lru_cache`` (in C: a hit costs less than with cachetools, measured);
    failures are not kept, and an answer is a tuple of strings, so no caller can change
    another's.
    """

    def __init__(self, size: int = HEADER_CACHE_SIZE) -> None:
        self._parse = functools.lru_cache(maxsize=size)(parse_header)

    def __len__(self) -> int:
        return self._parse.cache_info().currsize

    def __call__(self, segment: str) -> tuple[str, str]:
        return self._parse(segment)


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


def parse_jwt(token: str, header: Callable[[str], tuple[str, str]] = parse_header) -> ParsedJwt:
    """Split, decode and type-check a token (``Jwt::parseFromString``); raises
    ``JwtVerifyError`` with the first problem found. ``header`` parses the header
    section (a ``HeaderCache`` keeps its answers)."""
    parts = token.split(".")
    if len(parts) != 3 or not (parts[0] and parts[1] and parts[2]):
        raise JwtVerifyError(JWT_BAD_FORMAT)
    header_b64, payload_b64, signature_b64 = parts
    alg, kid = header(header_b64)
    payload = _json_section(payload_b64, JWT_PAYLOAD_BAD_BASE64, JWT_PAYLOAD_BAD_JSON)
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


# --- signatures ----------------------------------------------------------------------------------

_SHA256, _SHA384, _SHA512 = hashes.SHA256(), hashes.SHA384(), hashes.SHA512()
_PKCS1 = padding.PKCS1v15()
_PSS = {
    h.name: padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO)
    for h in (_SHA256, _SHA384, _SHA512)
}
_ECDSA = {h.name: ec.ECDSA(h) for h in (_SHA256, _SHA384, _SHA512)}
_HMAC = {
    "HS256": HMACAlgorithm(HMACAlgorithm.SHA256),
    "HS384": HMACAlgorithm(HMACAlgorithm.SHA384),
    "HS512": HMACAlgorithm(HMACAlgorithm.SHA512),
}
_EDDSA = OKPAlgorithm()


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
            return _HMAC.get(alg, _HMAC["HS256"]).verify(data, key, signature)
        if jwk.kty == "OKP" and isinstance(key, ed25519.Ed25519PublicKey):
            return _EDDSA.verify(data, key, signature)
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
