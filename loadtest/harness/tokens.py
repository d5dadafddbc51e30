"""A pool of signed JWTs for load tests: one user per token, plus tokens that must fail.

The pool file is what the k6 and locust scenarios read (``TOKENS=...``), so any token
source works as long as it writes this shape::

    {
      "issuer": "https://loadtest.mixerless.example",
      "audience": "gateway",
      "run": "k3x9q",                         # names this pool's users: fresh counters per pool
      "expires_at": 1796000000,
      "users":  [{"sub": "lt-k3x9q-0001", "token": "eyJ..."}, ...],   # valid, no groups
      "staff":  [{"sub": "lt-k3x9q-staff-01", "token": "eyJ..."}],     # valid, groups [staff]
      "expired": ["eyJ..."],                   # valid signature, exp in the past: 401
      "bad_signature": ["eyJ..."]              # a user token with its signature altered: 401
    }

The default key is the committed load-test key (``loadtest/keys/``), which the demo
policies trust through ``policies/authz/loadtest-jwt.yaml``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from harness import LOADTEST_DIR

DEFAULT_KEY = LOADTEST_DIR / "keys" / "loadtest-signing-key.pem"
ISSUER = "https://loadtest.mixerless.example"
AUDIENCE = "gateway"
KID = "mixerless-loadtest-2026"


@dataclass(frozen=True)
class PoolSpec:
    users: int = 1000
    staff: int = 4
    expired: int = 16
    bad_signature: int = 16
    ttl_s: int = 4 * 3600
    issuer: str = ISSUER
    audience: str = AUDIENCE
    kid: str = KID
    key_file: Path = DEFAULT_KEY


def _tamper(token: str) -> str:
    """The same token with one bit of its signature flipped (still valid base64url)."""
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return ".".join([head, payload, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()])


def mint_pool(spec: PoolSpec, now: float | None = None) -> dict[str, Any]:
    """Sign ``spec.users`` user tokens (and the rest) with a fresh run name."""
    # Parsed once: PyJWT given PEM bytes would parse and check the key on every signature.
    key = load_pem_private_key(spec.key_file.read_bytes(), password=None)
    issued = int(time.time() if now is None else now)
    run = secrets.token_hex(3)
    headers = {"kid": spec.kid, "typ": "JWT"}

    def sign(sub: str, expires: int, **claims: Any) -> str:
        body = {
            "iss": spec.issuer,
            "aud": spec.audience,
            "sub": sub,
            "iat": issued,
            "exp": expires,
            **claims,
        }
        return jwt.encode(body, key, algorithm="RS256", headers=headers)

    expires = issued + spec.ttl_s
    users = [
        {"sub": f"lt-{run}-{i:04d}", "token": sign(f"lt-{run}-{i:04d}", expires)}
        for i in range(1, spec.users + 1)
    ]
    staff = [
        {
            "sub": f"lt-{run}-staff-{i:02d}",
            "token": sign(f"lt-{run}-staff-{i:02d}", expires, groups=["staff"]),
        }
        for i in range(1, spec.staff + 1)
    ]
    expired = [sign(f"lt-{run}-expired-{i:02d}", issued - 3600) for i in range(spec.expired)]
    bad = (
        [_tamper(users[i % len(users)]["token"]) for i in range(spec.bad_signature)]
        if users
        else []
    )
    return {
        "issuer": spec.issuer,
        "audience": spec.audience,
        "run": run,
        "expires_at": expires,
        "users": users,
        "staff": staff,
        "expired": expired,
        "bad_signature": bad,
    }


def write_pool(pool: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pool, indent=1) + "\n")
    return path
