"""A test token issuer: keys made once per session, JWKS documents, signed tokens, and a
tiny JWKS + OIDC discovery server with fetch counters and failure switches."""

import asyncio
import base64
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ISSUER = "https://issuer.example.com"
NOW = 1_700_000_000.0  # ManualClock's default start

_DEFAULT_ALG = {
    "rsa": "RS256",
    "rsa-2": "RS256",
    "ec256": "ES256",
    "ec384": "ES384",
    "ec521": "ES512",
    "ed25519": "EdDSA",
    "hmac": "HS256",
}
_CURVES = {"ec256": ec.SECP256R1(), "ec384": ec.SECP384R1(), "ec521": ec.SECP521R1()}
_CRV = {"ec256": "P-256", "ec384": "P-384", "ec521": "P-521"}
_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_OMIT: Any = object()


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, length: int | None = None) -> str:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


@functools.cache
def private_key(name: str) -> Any:
    """The private key called ``name`` (generated once per test session)."""
    if name.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if name in _CURVES:
        return ec.generate_private_key(_CURVES[name])
    if name == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if name.startswith("hmac"):
        return hashlib.sha256(name.encode()).digest()
    raise KeyError(name)


def public_jwk(name: str, *, kid: Any = _OMIT, alg: Any = _OMIT, **extra: Any) -> dict[str, Any]:
    """The public JWK of key ``name``; ``kid`` defaults to the name, ``alg`` is left out
    unless given (``None`` leaves either out)."""
    key = private_key(name)
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        numbers_ec = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        jwk = {
            "kty": "EC",
            "crv": _CRV[name],
            "x": _int_b64(numbers_ec.x, size),
            "y": _int_b64(numbers_ec.y, size),
        }
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    else:
        jwk = {"kty": "oct", "k": b64url(key)}
    kid = name if kid is _OMIT else kid
    if kid is not None:
        jwk["kid"] = kid
    if alg is not _OMIT and alg is not None:
        jwk["alg"] = alg
    jwk.update(extra)
    return jwk


def public_pem(name: str) -> str:
    """The public key ``name`` as a PEM SubjectPublicKeyInfo."""
    return (
        private_key(name)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def jwks(*keys: dict[str, Any] | str) -> str:
    """A JWK Set document; strings are key names, dicts are JWKs as-is."""
    entries = [public_jwk(k) if isinstance(k, str) else k for k in keys]
    return json.dumps({"keys": entries})


def signature(key_name: str, alg: str, data: bytes) -> bytes:
    """Sign ``data`` with key ``key_name`` as ``alg`` (raw r||s for ECDSA)."""
    key = private_key(key_name)
    if alg == "EdDSA":
        return bytes(key.sign(data))
    digest = _HASHES[alg[2:]]
    if alg.startswith("HS"):
        return hmac.new(key, data, getattr(hashlib, digest.name)).digest()
    if alg.startswith("RS"):
        return bytes(key.sign(data, padding.PKCS1v15(), digest))
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH)
        return bytes(key.sign(data, pss, digest))
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid payload for ``ISSUER`` at ``NOW``; ``None`` values drop a claim."""
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "api.example.com",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 3600,
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def token(
    payload: dict[str, Any] | bytes | None = None,
    *,
    key: str = "rsa",
    alg: str | None = None,
    kid: Any = _OMIT,
    header: dict[str, Any] | None = None,
    sign_as: str | None = None,
) -> str:
    """A signed token. ``kid`` defaults to the key name (``None`` omits it); ``header``
    replaces the whole header; ``sign_as`` signs with another algorithm than the
    header names (for confusion tests)."""
    alg = alg or _DEFAULT_ALG[key]
    if header is None:
        header = {"alg": alg, "typ": "JWT"}
        kid = key if kid is _OMIT else kid
        if kid is not None:
            header["kid"] = kid
    body = payload if isinstance(payload, bytes) else json.dumps(payload or claims()).encode()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(body)}"
    sig = signature(key, sign_as or alg, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(sig)}"


def tampered(jwt: str) -> str:
    """The token with a claim changed but the original signature kept."""
    header, payload, sig = jwt.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["sub"] = "mallory"
    return f"{header}.{b64url(json.dumps(data).encode())}.{sig}"


@dataclass
class JwksServer:
    """JWKS at ``/jwks.json`` and OIDC discovery under ``/issuer`` on 127.0.0.1:<random>.

    Switches: ``fail`` answers 500, ``delay`` sleeps before answering, ``body``
    replaces the JWKS text, ``discovery`` the discovery document. Counters:
    ``jwks_fetches``, ``discovery_fetches``.
    """

    document: str
    fail: bool = False
    delay: float = 0.0
    body: str | None = None
    discovery: str | None = None  # replaces the discovery document
    jwks_fetches: int = 0
    discovery_fetches: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def jwks_uri(self) -> str:
        return f"{self.base_url}/jwks.json"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/issuer/"

    async def start(self) -> "JwksServer":
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_get("/issuer/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/big", self._big)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, text: str, content_type: str = "application/json") -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return web.Response(status=500, text="down")
        return web.Response(text=text, content_type=content_type)

    async def _jwks(self, _: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return await self._answer(self.body if self.body is not None else self.document)

    async def _discovery(self, _: web.Request) -> web.Response:
        self.discovery_fetches += 1
        document = json.dumps({"issuer": self.issuer, "jwks_uri": self.jwks_uri})
        return await self._answer(self.discovery if self.discovery is not None else document)

    async def _redirect(self, _: web.Request) -> web.Response:
        raise web.HTTPFound(self.jwks_uri)

    async def _big(self, _: web.Request) -> web.Response:
        padding_keys = [{"kty": "oct", "k": "A" * 1000, "kid": str(i)} for i in range(1200)]
        return web.Response(
            text=json.dumps({"keys": padding_keys}), content_type="application/json"
        )
