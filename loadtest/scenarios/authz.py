"""The authz scenario: its signing key and tokens, its 20 gateway policies, its CheckRequests.

What an Istio ingress gateway sends to ext_authz, and the policies ``check_load.py`` serves
(``--print-policy`` prints them). See ``loadtest/README.md``, "Scenarios".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from harness import OUT_DIR

from services import envoy_api as api

METHOD = "/envoy.service.auth.v3.Authorization/Check"
POLICY_SCENARIOS = ("policies20-cached-jwt", "policies20-fresh-rs256")

ISSUER = "https://auth.loadtest.example"
AUDIENCE = "api.example.com"
KID = "loadtest-rs256"
HOST = "api.example.com"
PATH = "/v1/orders/12345?expand=items"
CLIENT_IP = "198.18.7.42"  # the client, from X-Forwarded-For (RFC 2544 benchmarking range)
PEER_IP = "10.0.3.4"  # the load balancer in front of the gateway: the Check's source address
GATEWAY_IP = "10.0.7.9"
TOKEN_LIFETIME = 30 * 86400
GRPC_CODES = {0: "OK", 7: "PERMISSION_DENIED", 16: "UNAUTHENTICATED"}


# --- keys and tokens --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """The benchmark's RSA-2048 signing key, kept in ``path`` (created on first use) so a
    ``--target`` server configured from ``--print-policy`` accepts later tokens too."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise RuntimeError(f"{path} is not an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def key_fingerprint(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def jwks_text(key: rsa.RSAPrivateKey) -> str:
    numbers = key.public_key().public_numbers()

    def b64int(value: int) -> str:
        return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    jwk = {"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig"}
    jwk |= {"n": b64int(numbers.n), "e": b64int(numbers.e)}
    return json.dumps({"keys": [jwk]}, separators=(",", ":"))


_HEADER_B64 = b64url(json.dumps({"alg": "RS256", "kid": KID, "typ": "JWT"}).encode())


def mint(key: rsa.RSAPrivateKey, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, separators=(",", ":")).encode()
    signing_input = f"{_HEADER_B64}.{b64url(body)}"
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def claims(number: int, issued: int, expires: int) -> dict[str, Any]:
    """A valid payload; ``number`` makes the subject (so the token) unique."""
    return {
        "iss": ISSUER,
        "sub": f"user-{number:08d}",
        "aud": AUDIENCE,
        "iat": issued,
        "exp": expires,
        "scope": "orders:read",
    }


def token_pool(key: rsa.RSAPrivateKey, size: int) -> list[str]:
    """``size`` distinct valid tokens, cached in ``loadtest/out`` (minting costs ~0.7 ms each
    here); minted again when the key changed or they expire within a day."""
    cache = OUT_DIR / f"check_load-tokens-{key_fingerprint(key)}.json"
    now = int(time.time())
    if cache.exists():
        with open(cache) as source:
            stored = json.load(source)
        if stored["exp"] > now + 86400 and len(stored["tokens"]) >= size:
            return list(stored["tokens"][:size])
    print(f"minting {size} RS256 tokens (~{size * 0.0007:.0f} s, once; cached in {cache})")
    expires = now + TOKEN_LIFETIME
    tokens = [mint(key, claims(n, now, expires)) for n in range(size)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"exp": expires, "tokens": tokens}))
    return tokens


def tampered(token: str) -> str:
    """The token with its subject changed and the original signature kept."""
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["sub"] = "user-99999999"
    return f"{header}.{b64url(json.dumps(data, separators=(',', ':')).encode())}.{signature}"


# --- policies ---------------------------------------------------------------------------------


def _policy(name: str, action: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "action": action,
            "rules": rules,
        },
    }


def _to(**operation: list[str]) -> list[dict[str, Any]]:
    return [{"operation": operation}]


def _from(**source: list[str]) -> list[dict[str, Any]]:
    return [{"source": source}]


def _when(key: str, values: list[str], negate: bool = False) -> dict[str, Any]:
    return {"key": key, "notValues" if negate else "values": values}


def authorization_policies() -> list[dict[str, Any]]:
    """20 gateway policies: 8 DENY (none matches the benchmark request, so all are
    evaluated) and 12 ALLOW, of which only the last one in evaluation order
    (``orders-api``; policies are evaluated by name) allows it."""
    principals = [f"{ISSUER}/*"]
    deny = [
        _policy(
            "deny-blocked-networks",
            "DENY",
            [
                {
                    "from": _from(
                        remoteIpBlocks=["203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"]
                    )
                }
            ],
        ),
        _policy("deny-debug-methods", "DENY", [{"to": _to(methods=["TRACE", "CONNECT", "DEBUG"])}]),
        _policy(
            "deny-internal-paths",
            "DENY",
            [{"to": _to(paths=["/internal/*", "/debug/*", "/.env", "/.git/*", "/actuator/*"])}],
        ),
        _policy(
            "deny-scanners",
            "DENY",
            [{"when": [_when("request.headers[user-agent]", ["sqlmap*", "masscan*", "*Nikto"])]}],
        ),
        _policy(
            "deny-legacy-hosts",
            "DENY",
            [{"to": _to(hosts=["legacy.example.com", "*.internal.example.com"])}],
        ),
        _policy(
            "require-jwt",
            "DENY",
            [
                {
                    "from": _from(notRequestPrincipals=["*"]),
                    "to": _to(paths=["/v1/*", "/api/*", "/admin", "/admin/*"]),
                }
            ],
        ),
        _policy(
            "admin-is-staff-only",
            "DENY",
            [
                {
                    "to": _to(paths=["/admin", "/admin/*"]),
                    "when": [_when("request.auth.claims[groups]", ["staff"], negate=True)],
                }
            ],
        ),
        _policy(
            "deny-readonly-tenant-writes",
            "DENY",
            [
                {
                    "to": _to(methods=["POST", "PUT", "PATCH", "DELETE"]),
                    "when": [_when("request.headers[x-tenant-id]", ["readonly-*"])],
                }
            ],
        ),
    ]
    allow = [
        _policy("allow-health", "ALLOW", [{"to": _to(paths=["/healthz", "/readyz"])}]),
        _policy(
            "allow-docs", "ALLOW", [{"to": _to(hosts=["docs.example.com"], paths=["/docs/*"])}]
        ),
        _policy(
            "allow-login",
            "ALLOW",
            [{"to": _to(paths=["/oauth/*", "/login", "/logout"], methods=["GET", "POST"])}],
        ),
        _policy(
            "allow-staff-admin",
            "ALLOW",
            [
                {
                    "from": _from(requestPrincipals=principals),
                    "to": _to(paths=["/admin", "/admin/*"]),
                    "when": [_when("request.auth.claims[groups]", ["staff"])],
                }
            ],
        ),
        _policy(
            "allow-payments",
            "ALLOW",
            [
                {
                    "from": _from(requestPrincipals=[f"{ISSUER}/svc-*"]),
                    "to": _to(paths=["/v1/payments/*"], methods=["POST"]),
                }
            ],
        ),
        _policy(
            "allow-partners",
            "ALLOW",
            [{"from": _from(remoteIpBlocks=["192.0.2.0/24"]), "to": _to(paths=["/partner/*"])}],
        ),
        _policy(
            "allow-metrics-scrape",
            "ALLOW",
            [
                {
                    "from": _from(ipBlocks=["10.128.0.0/16"]),
                    "to": _to(paths=["/metrics"], methods=["GET"]),
                }
            ],
        ),
        _policy(
            "allow-inventory-read",
            "ALLOW",
            [
                {
                    "from": _from(requestPrincipals=["*"]),
                    "to": _to(paths=["/v1/inventory/*"], methods=["GET", "HEAD"]),
                }
            ],
        ),
        _policy(
            "allow-webhooks",
            "ALLOW",
            [
                {
                    "to": _to(paths=["/hooks/*"], methods=["POST"]),
                    "when": [_when("request.headers[x-hub-signature-256]", ["sha256=*"])],
                }
            ],
        ),
        _policy(
            "allow-users-self",
            "ALLOW",
            [
                {
                    "from": _from(requestPrincipals=principals),
                    "to": _to(paths=["/v1/users/*"], methods=["GET", "PUT"]),
                }
            ],
        ),
        _policy(
            "allow-catalog",
            "ALLOW",
            [
                {
                    "to": _to(
                        hosts=["api.example.com", "www.example.com"],
                        paths=["/v1/catalog", "/v1/catalog/*"],
                        methods=["GET"],
                    )
                }
            ],
        ),
        _policy(
            "orders-api",
            "ALLOW",
            [
                {
                    "from": [
                        {
                            "source": {
                                "requestPrincipals": principals,
                                "remoteIpBlocks": ["198.18.0.0/15", "100.64.0.0/10"],
                            }
                        }
                    ],
                    "to": _to(
                        hosts=["api.example.com"],
                        methods=["GET", "POST"],
                        paths=["/v1/orders", "/v1/orders/*"],
                    ),
                    "when": [
                        _when("request.headers[x-tenant-id]", ["tenant-*"]),
                        _when("request.auth.claims[scope]", ["orders:read"]),
                    ],
                }
            ],
        ),
    ]
    return deny + allow


def policy_files(scenario: str, key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The policy directory of a scenario: file name -> YAML text (empty for ``none``)."""
    if scenario not in POLICY_SCENARIOS:
        return {}
    mesh = {
        "apiVersion": "mixerless.io/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "mesh", "namespace": "istio-system"},
        "spec": {"defaultConfig": {"gatewayTopology": {"numTrustedProxies": 1}}},
    }
    authentication = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "gateway-jwt", "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "jwtRules": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks": jwks_text(key),
                    "outputClaimToHeaders": [{"header": "x-user-id", "claim": "sub"}],
                }
            ],
        },
    }

    def dump(documents: list[dict[str, Any]]) -> str:
        return "# Written by loadtest/check_load.py.\n" + yaml.safe_dump_all(
            documents, sort_keys=False, width=100_000
        )

    return {
        "mesh.yaml": dump([mesh]),
        "gateway-jwt.yaml": dump([authentication]),
        "gateway-access.yaml": dump(authorization_policies()),
    }


# --- requests ---------------------------------------------------------------------------------


def check_request(
    token: str | None,
    *,
    request_id: str,
    path: str = PATH,
    method: str = "GET",
    client_ip: str = CLIENT_IP,
    raw_headers: bool = False,
) -> bytes:
    """A serialized CheckRequest as an Istio ingress gateway sends it: 15 headers (14
    without a token), the client in X-Forwarded-For, the load balancer as the peer.

    ``raw_headers``: the headers as a gateway configured by mixerless sends them
    (``encode_raw_headers``: ``header_map``, each value as raw bytes) instead of the
    ``headers`` map Envoy sends by default.
    """
    headers = {
        ":authority": HOST,
        ":method": method,
        ":path": path,
        ":scheme": "https",
        "accept": "application/json, text/plain;q=0.9, */*;q=0.8",
        "accept-encoding": "gzip, deflate, br",
        "accept-language": "en-GB,en;q=0.9",
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/128.0 Safari",
        "x-forwarded-for": f"{client_ip},{PEER_IP}",
        "x-forwarded-proto": "https",
        "x-request-id": request_id,
        "x-tenant-id": "tenant-0042",
        "traceparent": f"00-{hashlib.md5(request_id.encode()).hexdigest()}-00f067aa0ba902b7-01",
        "x-envoy-attempt-count": "1",
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = api.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = PEER_IP
    attributes.source.address.socket_address.port_value = 41234
    attributes.destination.address.socket_address.address = GATEWAY_IP
    attributes.destination.address.socket_address.port_value = 8443
    attributes.tls_session.sni = HOST
    http = attributes.request.http
    http.id = request_id
    http.method = method
    http.host = HOST
    http.path = path
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    if raw_headers:
        for name, value in headers.items():
            http.header_map.headers.add(key=name, raw_value=value.encode())
    else:
        http.headers.update(headers)
    return bytes(request.SerializeToString())


def request_id(number: int) -> str:
    return f"{number:08x}-9c1e-4d2a-b7f3-{number * 2654435761 % 16**12:012x}"


def classify_check(response: bytes) -> str | None:
    """The gRPC status name of a serialized CheckResponse (OK, PERMISSION_DENIED, ...)."""
    try:
        code = api.CheckResponse.FromString(response).status.code
    except Exception:  # a garbled answer is an error, whatever protobuf raises
        return None
    return GRPC_CODES.get(code, f"code_{code}")
