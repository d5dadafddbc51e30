"""JSON Web Keys: a JWK Set, a PEM public key, or a ``{kid: X.509 PEM}`` map, parsed as
jwt_verify_lib's ``src/jwks.cc`` does; keys that do not parse are skipped and counted.

PyJWT's ``from_jwk`` (``jwt.algorithms``) builds the key objects, but only after this
module has decided, with jwt_verify_lib's rules and status strings, that the JWK is
acceptable: field presence and types, ``kty``/``alg``/``crv`` pairing, strict
base64url, RSA ``e`` of 3 or 65537, the Ed25519 ``x`` length. What reaches PyJWT is a
canonical public JWK (``n``/``e``, fixed-length EC coordinates, no private members),
so its own differences (lenient base64, exact EC coordinate lengths, private keys,
Ed448) never decide. PEM and X.509 inputs go to ``cryptography`` directly: PyJWT's
``prepare_key`` would also take private keys and SSH keys, which jwt_verify_lib refuses.
"""

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from services.authz.jwt.status import (
    _X509_PREFIX,
    _X509_SUFFIX,
    JWKS_BAD_KEYS,
    JWKS_BAD_KTY,
    JWKS_EC_KEY_ALG_NOT_COMPATIBLE_WITH_CRV,
    JWKS_EC_KEY_ALG_OR_CRV_UNSUPPORTED,
    JWKS_EC_KEY_BAD_ALG,
    JWKS_EC_KEY_BAD_CRV,
    JWKS_EC_KEY_BAD_X,
    JWKS_EC_KEY_BAD_Y,
    JWKS_EC_KEY_MISSING_X,
    JWKS_EC_KEY_MISSING_Y,
    JWKS_EC_PARSE_ERROR,
    JWKS_EC_X_OR_Y_BAD_BASE64,
    JWKS_HMAC_KEY_BAD_ALG,
    JWKS_HMAC_KEY_BAD_K,
    JWKS_HMAC_KEY_MISSING_K,
    JWKS_MISSING_KTY,
    JWKS_NO_KEYS,
    JWKS_NO_VALID_KEYS,
    JWKS_NOT_IMPLEMENTED_KTY,
    JWKS_OCT_BAD_BASE64,
    JWKS_OKP_KEY_BAD_ALG,
    JWKS_OKP_KEY_BAD_CRV,
    JWKS_OKP_KEY_BAD_X,
    JWKS_OKP_KEY_CRV_UNSUPPORTED,
    JWKS_OKP_KEY_MISSING_CRV,
    JWKS_OKP_KEY_MISSING_X,
    JWKS_OKP_X_BAD_BASE64,
    JWKS_OKP_X_WRONG_LENGTH,
    JWKS_PARSE_ERROR,
    JWKS_PEM_BAD_BASE64,
    JWKS_PEM_NOT_IMPLEMENTED_KTY,
    JWKS_RSA_KEY_BAD_ALG,
    JWKS_RSA_KEY_BAD_E,
    JWKS_RSA_KEY_BAD_N,
    JWKS_RSA_KEY_MISSING_E,
    JWKS_RSA_KEY_MISSING_N,
    JWKS_RSA_PARSE_ERROR,
    JWKS_X509_GET_PUBKEY_ERROR,
    JWKS_X509_PARSE_ERROR,
)

# base64url -> standard alphabet; "+" and "/" (not base64url) become "!", which strict
# decoding rejects along with every other character outside the alphabet.
_B64URL_TO_STD = bytes.maketrans(b"-_+/", b"+/!!")
_PADDING = (b"", b"", b"==", b"=")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded (or correctly padded) base64url; ValueError on anything else."""
    std = segment.encode("ascii").translate(_B64URL_TO_STD)
    return binascii.a2b_base64(std + _PADDING[len(std) % 4], strict_mode=True)


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | bytes


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # NaN/Infinity are not JSON


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = _JSON.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


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


def _b64_uint(value: int, size: int) -> str:
    """``value`` as ``size`` big-endian bytes in base64url; OverflowError if too large."""
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


def _rsa_jwk(jwk: dict[str, Any], kid: str, alg: str) -> Jwk:
    if alg and not alg.startswith(("RS", "PS")):
        raise _KeyError(JWKS_RSA_KEY_BAD_ALG)
    n_text = _string_field(jwk, "n", JWKS_RSA_KEY_MISSING_N, JWKS_RSA_KEY_BAD_N)
    e_text = _string_field(jwk, "e", JWKS_RSA_KEY_MISSING_E, JWKS_RSA_KEY_BAD_E)
    n, e = _b64_int(n_text), _b64_int(e_text)
    if n is None or e is None or e not in (3, 65537):
        raise _KeyError(JWKS_RSA_PARSE_ERROR)
    try:
        key = RSAAlgorithm.from_jwk({"kty": "RSA", "n": n_text, "e": e_text})
    except (ValueError, InvalidKeyError):
        raise _KeyError(JWKS_RSA_PARSE_ERROR) from None
    assert isinstance(key, rsa.RSAPublicKey)  # no "d" was passed
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
    # BoringSSL takes the coordinates as numbers of any length; PyJWT wants exactly the
    # curve's size, so they are handed over re-encoded (too large a number is no point).
    size = (curve.key_size + 7) // 8
    try:
        canonical = {"kty": "EC", "crv": crv, "x": _b64_uint(x, size), "y": _b64_uint(y, size)}
        key = ECAlgorithm.from_jwk(canonical)
    except (OverflowError, ValueError, InvalidKeyError):
        raise _KeyError(JWKS_EC_PARSE_ERROR) from None
    assert isinstance(key, ec.EllipticCurvePublicKey)  # no "d" was passed
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
    return Jwk("oct", HMACAlgorithm.from_jwk({"kty": "oct", "k": k_text}), kid, alg)


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
    try:
        key = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": crv, "x": x_text})
    except InvalidKeyError:
        raise _KeyError(JWKS_OKP_X_BAD_BASE64) from None
    assert isinstance(key, ed25519.Ed25519PublicKey)  # crv is Ed25519 and no "d" was passed
    return Jwk("OKP", key, kid, alg, crv)


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
    document = json_object(text.encode("utf-8", "surrogatepass"))
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
