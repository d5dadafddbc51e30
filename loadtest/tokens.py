"""Mint a pool of load-test JWTs for the k6 and locust scenarios.

    .venv/bin/python loadtest/tokens.py             # 1,000 users -> loadtest/out/tokens.json
    .venv/bin/python loadtest/tokens.py --users 200 --out /tmp/tokens.json
    .venv/bin/python loadtest/tokens.py --key my-key.pem --issuer https://id.example.com \\
        --kid my-kid --audience my-api --out /tmp/tokens.json

Every pool gets a fresh run name inside its subjects (``lt-<run>-0001``), so its users
start with fresh quota counters. By default the tokens are signed with the committed
load-test key, which the demo gateway trusts (``policies/authz/loadtest-jwt.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import OUT_DIR
from harness.tokens import AUDIENCE, DEFAULT_KEY, ISSUER, KID, PoolSpec, mint_pool, write_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="valid user tokens (default 1000)")
    parser.add_argument("--staff", type=int, default=4, help="valid tokens with groups [staff]")
    parser.add_argument("--expired", type=int, default=16, help="expired tokens")
    parser.add_argument(
        "--bad-signature", type=int, default=16, help="tokens with a broken signature"
    )
    parser.add_argument("--ttl", type=int, default=4 * 3600, help="seconds until the tokens expire")
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY, help="RSA private key (PEM)")
    parser.add_argument("--kid", default=KID)
    parser.add_argument("--issuer", default=ISSUER)
    parser.add_argument("--audience", default=AUDIENCE)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "tokens.json")
    args = parser.parse_args()
    spec = PoolSpec(
        users=args.users,
        staff=args.staff,
        expired=args.expired,
        bad_signature=args.bad_signature,
        ttl_s=args.ttl,
        issuer=args.issuer,
        audience=args.audience,
        kid=args.kid,
        key_file=args.key,
    )
    path = write_pool(mint_pool(spec), args.out)
    print(
        f"{path}: {spec.users} users, {spec.staff} staff, {spec.expired} expired, "
        f"{spec.bad_signature} with a bad signature ({spec.issuer}, aud {spec.audience})"
    )


if __name__ == "__main__":
    main()
