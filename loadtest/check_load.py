"""Load driver for mixerless's authz service (``envoy.service.auth.v3.Authorization/Check``).

It starts its own ``mixerless serve --only authz`` on free ports with a generated policy
directory (or the no-op ``noop_server.py --service authz``), or targets an existing
server with ``--target``.
Before each run it checks a few answers, so a broken server cannot be benchmarked, then
drives closed-loop load with h2load (one pre-serialized CheckRequest per h2load process)
or the grpc.aio generator of ``rls_load.py`` (any number of distinct CheckRequests).

Scenarios (``--scenario``):

* ``none``: an empty policy directory; every request is allowed, no token is looked at.
  The cost of the Check plumbing.
* ``policies20-cached-jwt``: 20 AuthorizationPolicies (8 DENY, 12 ALLOW; paths, methods,
  hosts, remoteIpBlocks/ipBlocks, request.headers, JWT claims, requestPrincipals) and a
  RequestAuthentication with an inline RS256 JWKS. Every request carries the SAME valid
  token, so the server's verified-token cache answers after the first request.
* ``policies20-fresh-rs256``: the same policies; every request carries a DIFFERENT valid
  token from a pool larger than the server's token cache, so every request is a fresh
  RS256 verification. Needs the Python generator (h2load sends one body per process).
* ``noop``: ``noop_server.py --service authz``, an always-OK grpc.aio + uvloop server: the ceiling.

Each invocation appends one JSON line to ``loadtest/out/results.jsonl`` and prints a table.
Shared machinery (processes, h2load, the grpc.aio generator, CPU accounting, idle wait,
medians, versions) is imported from ``rls_load.py``. See ``loadtest/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import rls_load as rl
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services import envoy_api as api
from services.authz.jwt.authenticate import DEFAULT_CACHE_SIZE as SERVER_TOKEN_CACHE

HERE = rl.HERE
OUT_DIR = rl.OUT_DIR
METHOD = "/envoy.service.auth.v3.Authorization/Check"
SCENARIOS = ("none", "policies20-cached-jwt", "policies20-fresh-rs256", "noop")
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
# ``mixerless serve`` from another source tree (``--server-tree``): its ``services`` first.
_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from services.cli import main; "
_BOOT += "sys.exit(main())"


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
) -> bytes:
    """A serialized CheckRequest as an Istio ingress gateway sends it: 15 headers (14
    without a token), the client in X-Forwarded-For, the load balancer as the peer."""
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


# --- correctness check before every run ----------------------------------------------------


def _expect(
    what: str,
    response: Any,
    grpc_code: int,
    http_status: int | None = None,
    body: str | None = None,
) -> None:
    if response.status.code != grpc_code:
        raise AssertionError(f"{what}: gRPC status {response.status.code} != {grpc_code}")
    if http_status is not None and response.denied_response.status.code != http_status:
        raise AssertionError(
            f"{what}: HTTP {response.denied_response.status.code} != {http_status}: {response}"
        )
    if body is not None and response.denied_response.body != body:
        raise AssertionError(f"{what}: body {response.denied_response.body!r} != {body!r}")


def preflight(
    target: str, scenario: str, key: rsa.RSAPrivateKey, token: str, samples: Sequence[str]
) -> list[str]:
    """Check a few answers; return what was checked. Raises ``AssertionError`` when wrong."""
    checked: list[str] = []
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        raw = channel.unary_unary(METHOD)

        def check(what: str, body: bytes) -> Any:
            return api.CheckResponse.FromString(raw(body, timeout=5))

        valid = check("valid token", check_request(token, request_id=request_id(1)))
        _expect("valid token", valid, 0)
        if scenario == "noop":
            return ["valid token: OK (no-op server)"]
        no_token = check("no token", check_request(None, request_id=request_id(2)))
        bad = check("tampered token", check_request(tampered(token), request_id=request_id(3)))
        if scenario == "none":
            _expect("no token", no_token, 0)
            _expect("tampered token, no RequestAuthentication", bad, 0)
            if valid.ok_response.headers or valid.ok_response.headers_to_remove:
                raise AssertionError(f"no policies, yet header changes: {valid}")
            return ["valid token, no token and tampered token: OK (no policies, no JWT rules)"]
        added = {h.header.key: h.header.value for h in valid.ok_response.headers}
        sub = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["sub"]
        if added.get("x-user-id") != sub:
            raise AssertionError(f"valid token: x-user-id {added.get('x-user-id')!r} != {sub!r}")
        if "authorization" not in valid.ok_response.headers_to_remove:
            raise AssertionError(f"valid token: authorization not removed: {valid}")
        checked.append(f"valid token: OK, x-user-id={sub}, authorization removed")
        _expect("no token", no_token, 7, 403, "RBAC: access denied")
        checked.append("no token: PERMISSION_DENIED 403 (require-jwt)")
        _expect("tampered token", bad, 16, 401, "Jwt verification fails")
        checked.append("tampered token: UNAUTHENTICATED 401 'Jwt verification fails'")
        now = int(time.time())
        expired = mint(key, claims(7, now - 7200, now - 3600))
        response = check("expired", check_request(expired, request_id=request_id(4)))
        _expect("expired token", response, 16, 401, "Jwt is expired")
        checked.append("expired token: UNAUTHENTICATED 401 'Jwt is expired'")
        response = check("admin", check_request(token, request_id=request_id(5), path="/admin/x"))
        _expect("/admin without staff", response, 7, 403)
        checked.append("/admin/x without groups=staff: 403 (admin-is-staff-only)")
        response = check(
            "blocked", check_request(token, request_id=request_id(6), client_ip="203.0.113.9")
        )
        _expect("client 203.0.113.9 (XFF)", response, 7, 403)
        checked.append("client 203.0.113.9 via X-Forwarded-For: 403 (deny-blocked-networks)")
        response = check("delete", check_request(token, request_id=request_id(7), method="DELETE"))
        _expect("DELETE (no ALLOW matches)", response, 7, 403)
        checked.append("DELETE: 403 (no ALLOW policy matches)")
        for index, sample in enumerate(samples):
            response = check("pool", check_request(sample, request_id=request_id(8 + index)))
            _expect(f"pool token {index}", response, 0)
        if samples:
            checked.append(f"{len(samples)} tokens from the pool: OK")
    return checked


# --- one run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # client-side: transport errors and answers other than OK
    server_errors: int  # server-side result="error" and backend errors
    denied: int  # server-side deny + unauthenticated in the window (all should be allowed)
    server_cores: float
    server_us_per_check: float
    generator_cores: float
    other_cores: float
    window_s: float
    detail: dict[str, Any]


NUMERIC = [
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "server_errors",
    "denied",
    "server_cores",
    "server_us_per_check",
    "generator_cores",
    "other_cores",
    "window_s",
]
SUMMED = ("errors", "server_errors", "denied")


@dataclass
class Config:
    scenario: str
    generator: str
    duration: float
    warmup: float
    connections: int
    concurrency: int
    h2load_procs: int
    pool: int
    target: str | None
    metrics_url: str | None
    server_pid: int | None
    label: str
    runs: int
    wait_idle: float
    idle_below: float
    max_other: float
    retries: int
    key_file: str
    server_tree: str | None


def thread_cpu(pid: int | None) -> Counter[str]:
    """CPU seconds per thread name (``comm``) of process ``pid``."""
    found: Counter[str] = Counter()
    if not pid:
        return found
    with_tasks = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(with_tasks)
    except OSError:
        return found
    for tid in tids:
        try:
            text = (with_tasks / tid / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        found[name] += (int(fields[11]) + int(fields[12])) / rl.CLK_TCK
    return found


class Bench:
    def __init__(self, config: Config, procs: rl.Processes, workdir: Path) -> None:
        self.config = config
        self.procs = procs
        self.workdir = workdir
        self.key = load_or_create_key(Path(config.key_file))
        now = int(time.time())
        self.token = mint(key=self.key, payload=claims(0, now, now + TOKEN_LIFETIME))
        self.pool: list[str] = []
        if config.scenario == "policies20-fresh-rs256":
            self.pool = token_pool(self.key, config.pool)
        self.payloads = self._payloads()
        self.starts = 0  # servers started, so a repeated run gets its own files

    def _payloads(self) -> list[bytes]:
        if self.pool:
            return [
                check_request(token, request_id=request_id(1000 + n))
                for n, token in enumerate(self.pool)
            ]
        return [check_request(self.token, request_id=request_id(1000))]

    def start_server(self, run: int) -> tuple[subprocess.Popen[bytes], str, str | None, Path]:
        grpc_port, http_port = rl.free_port(), rl.free_port()
        self.starts += 1
        tag = f"{run}-{self.starts}"
        log = self.workdir / f"server-{tag}.log"
        if self.config.scenario == "noop":
            argv = [
                sys.executable,
                str(HERE / "noop_server.py"),
                "--service",
                "authz",
                "--port",
                str(grpc_port),
            ]
            proc = self.procs.start("noop", argv, log)
            rl.wait_grpc_ready(f"127.0.0.1:{grpc_port}", proc, log, timeout=30)
            return proc, f"127.0.0.1:{grpc_port}", None, log
        policies = self.workdir / f"policies-{tag}"
        policies.mkdir()
        for name, text in policy_files(self.config.scenario, self.key).items():
            (policies / name).write_text(text)
        if self.config.server_tree:
            command = [sys.executable, "-c", _BOOT, self.config.server_tree]
        else:
            binary = shutil.which("mixerless", path=str(Path(sys.executable).parent))
            command = [binary or "mixerless"]
        argv = [
            *command,
            *("serve", "--only", "authz", "--policies", str(policies)),
            *("--host", "127.0.0.1", "--authz-port", str(grpc_port)),
            *("--http-port", str(http_port)),
        ]
        proc = self.procs.start("mixerless", argv, log)
        rl.wait_ready(f"http://127.0.0.1:{http_port}/readyz", proc, log, timeout=30)
        return proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/metrics", log

    async def run_once(self, run: int) -> RunResult:
        config = self.config
        idle_before = await rl.wait_for_idle(config.wait_idle, config.idle_below)
        server: subprocess.Popen[bytes] | None = None
        server_log: Path | None = None
        if config.target is None:
            server, target, metrics_url, server_log = await asyncio.to_thread(
                self.start_server, run
            )
            server_pid: int | None = server.pid
        else:
            target, metrics_url, server_pid = config.target, config.metrics_url, config.server_pid
        try:
            pool = self.pool
            samples = [pool[0], pool[len(pool) // 2], pool[-1]] if pool else []
            checked = await asyncio.to_thread(
                preflight, target, config.scenario, self.key, self.token, samples
            )
            result = await self._drive(target, metrics_url, server_pid, checked)
            result.detail["busy_cores_before_run"] = idle_before
        finally:
            if server is not None:
                await asyncio.to_thread(self.procs.stop, server)
        if server_log is not None:
            result.detail["server_log_problems"] = rl.log_problems(
                server_log, ignore=("policy directory has no policy files",)
            )
        return result

    async def _drive(
        self, target: str, metrics_url: str | None, server_pid: int | None, checked: list[str]
    ) -> RunResult:
        config = self.config
        window = rl.Window()
        window.start = time.time() + config.warmup
        window.end = window.start + config.duration
        if config.generator == "python":
            generator = asyncio.create_task(
                rl.python_generator(
                    target,
                    self.payloads,
                    config.connections,
                    config.concurrency,
                    window,
                    stop_at=window.end + 0.2,
                    method=METHOD,
                    classify=classify_check,
                )
            )
        else:
            body = self.workdir / "check-request.grpcframe"
            body.write_bytes(rl.grpc_frame(self.payloads[0]))
            generator = asyncio.create_task(
                rl.h2load_generator(
                    target,
                    [body] * max(1, min(config.h2load_procs, config.connections)),
                    config.connections,
                    config.concurrency,
                    config.warmup,
                    config.duration,
                    window,
                    self.workdir,
                    self.procs,
                    method=METHOD,
                )
            )
        try:
            await asyncio.sleep(max(0.0, window.start - time.time()))
            before = await asyncio.to_thread(self._sample, server_pid, metrics_url)
            await asyncio.sleep(max(0.0, window.end - time.time()))
            after = await asyncio.to_thread(self._sample, server_pid, metrics_url)
            outcome = await generator
        finally:
            if not generator.done():
                generator.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await generator
        return self._summarise(before, after, outcome, checked)

    def _sample(self, server_pid: int | None, metrics_url: str | None) -> dict[str, Any]:
        return {
            "wall": time.time(),
            "server_cpu": rl.tree_cpu_seconds(server_pid) if server_pid else float("nan"),
            "threads": thread_cpu(server_pid),
            "self_cpu": rl.self_cpu_seconds(),
            "machine_busy": rl.machine_busy_seconds(),
            "metrics": rl.scrape(metrics_url, service="authz"),
        }

    def _summarise(
        self,
        before: dict[str, Any],
        after: dict[str, Any],
        outcome: rl.GenResult,
        checked: list[str],
    ) -> RunResult:
        wall = after["wall"] - before["wall"]
        metrics: Counter[str] = after["metrics"] - before["metrics"]
        allowed = metrics["result|allow"]
        denied = metrics["result|deny"] + metrics["result|unauthenticated"]
        decisions = allowed + denied
        server_errors = metrics["result|error"] + metrics["backend_errors"]
        server_cpu = after["server_cpu"] - before["server_cpu"]
        self_cores = (after["self_cpu"] - before["self_cpu"]) / wall
        if outcome.cpu_cores is not None:  # h2load, measured over its life
            generator_cores, ours = outcome.cpu_cores, self_cores + outcome.cpu_cores
        else:  # the Python generator runs in this process
            generator_cores, ours = self_cores, self_cores
        busy = (after["machine_busy"] - before["machine_busy"]) / wall
        other_cores = max(0.0, busy - server_cpu / wall - ours)
        latencies = sorted(outcome.latencies_us)
        not_ok = sum(v for k, v in outcome.codes.items() if k != "OK")
        threads = {
            name: round(seconds / wall, 3)
            for name, seconds in (after["threads"] - before["threads"]).items()
        }
        return RunResult(
            rps=outcome.completed / self.config.duration,
            p50_ms=rl.percentile(latencies, 0.50) / 1000,
            p90_ms=rl.percentile(latencies, 0.90) / 1000,
            p99_ms=rl.percentile(latencies, 0.99) / 1000,
            max_ms=(latencies[-1] / 1000) if latencies else float("nan"),
            errors=sum(outcome.errors.values()) + not_ok,
            server_errors=server_errors,
            denied=denied,
            server_cores=server_cpu / wall,
            server_us_per_check=(server_cpu / (decisions or outcome.completed or 1)) * 1e6,
            generator_cores=generator_cores,
            other_cores=other_cores,
            window_s=wall,
            detail={
                "server_checks_in_window": decisions,
                "server_checks_per_s": decisions / wall if wall else 0.0,
                "server_counters": dict(metrics),
                "server_thread_cores": threads,
                "client_errors": dict(outcome.errors),
                "client_codes": dict(outcome.codes),
                "latency_over_ms": {
                    str(limit): sum(1 for v in latencies if v > limit * 1000)
                    for limit in (25, 50, 100, 200)
                },
                "distinct_requests": len(self.payloads),
                "token_bytes": len(self.pool[0] if self.pool else self.token),
                "request_bytes": len(self.payloads[0]),
                "preflight": checked,
                "notes": outcome.notes,
            },
        )


# --- reporting -------------------------------------------------------------------------------

COLUMNS = [
    ("run", 6),
    ("checks/s", 8),
    ("p50 ms", 7),
    ("p90 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("errors", 6),
    ("srv err", 7),
    ("denied", 6),
    ("srv cores", 9),
    ("µs/check", 8),
    ("gen", 5),
    ("other", 5),
]


def row(name: str, r: dict[str, Any]) -> str:
    values = [
        name,
        f"{r['rps']:.0f}",
        f"{r['p50_ms']:.2f}",
        f"{r['p90_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        f"{r['max_ms']:.1f}",
        str(int(r["errors"])),
        str(int(r["server_errors"])),
        str(int(r["denied"])),
        f"{r['server_cores']:.2f}",
        f"{r['server_us_per_check']:.0f}",
        f"{r['generator_cores']:.2f}",
        f"{r['other_cores']:.2f}",
    ]
    return rl.table_line(values, COLUMNS)


def services_digest(tree: Path) -> str:
    """A content hash of ``tree/services/**/*.py``: which server code was measured."""
    digest = hashlib.sha256()
    for path in sorted((tree / "services").rglob("*.py")):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def versions(server_tree: str | None) -> dict[str, str]:
    import cryptography

    found = rl.versions()
    found["cryptography"] = cryptography.__version__
    root = HERE.parent

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=root, capture_output=True, check=False)
        return done.stdout.decode(errors="replace")

    head = git("rev-parse", "--short=10", "HEAD").strip() or "unknown"
    diff = git("diff", "HEAD", "--", "services")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "services").split()
    digest = hashlib.sha256(diff.encode())
    for name in sorted(untracked):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    dirty = bool(diff or untracked)
    found["services_tree"] = head + (f"+dirty:{digest.hexdigest()[:10]}" if dirty else "")
    served = Path(server_tree) if server_tree else root
    found["served_services"] = f"{served}/services sha256:{services_digest(served)}"
    return found


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Drive load at mixerless's ext_authz Check and report checks/s, latency "
        "percentiles, errors and server CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="policies20-cached-jwt")
    parser.add_argument(
        "--generator",
        choices=("auto", "h2load", "python"),
        default="auto",
        help="auto: python for policies20-fresh-rs256 (needs distinct bodies), else h2load "
        "when installed",
    )
    rl.add_run_arguments(parser)
    parser.add_argument(
        "--h2load-procs",
        type=int,
        default=4,
        help="h2load processes (all send the same request; connections are split between them)",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=20_000,
        help="policies20-fresh-rs256: distinct tokens, each sent once per pass "
        f"(must exceed the server's token cache, {SERVER_TOKEN_CACHE})",
    )
    parser.add_argument(
        "--key-file",
        default=str(OUT_DIR / "check_load-key.pem"),
        help="RSA signing key (created on first use); --print-policy's JWKS is its public key",
    )
    parser.add_argument(
        "--target",
        help="host:port of a running server (none started); it must serve --print-policy",
    )
    parser.add_argument(
        "--server-tree",
        help="run `mixerless serve` from this source tree's `services` package instead of the "
        "working tree (e.g. a `git archive HEAD services` extract, while others edit services/)",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        help="a run during which other processes used more cores than this is discarded and "
        "repeated (0: keep every run)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repetitions of a discarded run; the last one is kept whatever its 'other'",
    )
    parser.add_argument(
        "--print-policy",
        action="store_true",
        help="print the scenario's policy YAML (for --target) and exit",
    )
    args = parser.parse_args(argv)
    fresh = args.scenario == "policies20-fresh-rs256"
    if args.generator == "auto":
        args.generator = "h2load" if shutil.which("h2load") and not fresh else "python"
    if args.generator == "h2load" and shutil.which("h2load") is None:
        parser.error("h2load is not installed (apt-get install -y nghttp2-client)")
    if fresh and args.generator == "h2load":
        parser.error(
            "policies20-fresh-rs256 needs --generator python: h2load sends one body per "
            "process, so its tokens would repeat and be answered from the server's cache"
        )
    if fresh and args.pool <= SERVER_TOKEN_CACHE:
        parser.error(f"--pool must exceed the server's token cache ({SERVER_TOKEN_CACHE})")
    if args.server_tree and not (Path(args.server_tree) / "services" / "cli.py").is_file():
        parser.error(f"--server-tree {args.server_tree}: no services/cli.py there")
    if args.server_tree and (args.target is not None or args.scenario == "noop"):
        parser.error("--server-tree only applies to the mixerless server this driver starts")
    if args.scenario == "noop" and args.target is not None:
        parser.error("--scenario noop starts its own no-op server")
    if min(args.connections, args.concurrency, args.runs, args.h2load_procs) < 1:
        parser.error("--connections, --concurrency, --runs and --h2load-procs must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.retries < 0:
        parser.error("--duration must be positive, --warmup and --retries not negative")
    return args


def config_from(args: argparse.Namespace) -> Config:
    return Config(
        scenario=args.scenario,
        generator=args.generator,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        concurrency=args.concurrency,
        h2load_procs=args.h2load_procs,
        pool=args.pool if args.scenario == "policies20-fresh-rs256" else 1,
        target=args.target,
        metrics_url=args.metrics_url,
        server_pid=args.server_pid,
        label=args.label or f"authz {args.scenario} {args.generator}",
        runs=args.runs,
        wait_idle=args.wait_idle,
        idle_below=args.idle_below,
        max_other=args.max_other,
        retries=args.retries,
        key_file=args.key_file,
        server_tree=str(Path(args.server_tree).resolve()) if args.server_tree else None,
    )


async def bench_main(
    config: Config, procs: rl.Processes, workdir: Path, discarded: list[RunResult]
) -> list[RunResult]:
    bench = await asyncio.to_thread(Bench, config, procs, workdir)
    print(
        f"# {config.label}: {config.generator}, {config.connections} conns x "
        f"{config.concurrency} streams, {config.duration:g}s (+{config.warmup:g}s warm-up), "
        f"{len(bench.payloads)} distinct request(s) of {len(bench.payloads[0])} bytes"
    )
    print(rl.table_header(COLUMNS))
    results = []
    for run in range(1, 1 + config.runs):
        for attempt in range(1 + config.retries):
            result = await bench.run_once(run)
            busy = config.max_other > 0 and result.other_cores > config.max_other
            if not busy or attempt == config.retries:
                break
            discarded.append(result)
            print(f"{row(f'({run})', asdict(result))}  discarded: other > {config.max_other:g}")
        results.append(result)
        print(row(str(run), asdict(result)) + ("  (busy)" if busy else ""), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_policy:
        key = load_or_create_key(Path(args.key_file))
        files = policy_files(args.scenario, key)
        print("---\n".join(files.values()), end="")
        return 0
    config = config_from(args)
    procs = rl.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="check_load-"))
    failed = True
    discarded: list[RunResult] = []
    try:
        with rl.terminate_on_sigterm():
            results = asyncio.run(bench_main(config, procs, workdir, discarded))
        failed = False
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, AssertionError, OSError, grpc.RpcError) as exc:
        print(f"check_load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep_logs or failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    median = rl.median_of(results, NUMERIC, SUMMED)
    print(row("median", median))
    line = {
        "ts": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "driver": "check_load",
        "label": config.label,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "config": asdict(config),
        "median": median,
        "runs": [asdict(r) for r in results],
        "discarded_runs": [asdict(r) for r in discarded],
        "versions": versions(config.server_tree),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as out:
        out.write(json.dumps(line, default=str) + "\n")
    print(f"appended to {args.results}")
    problems = median["errors"] + median["server_errors"] + median["denied"]
    return 0 if problems == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
