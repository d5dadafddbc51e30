"""Uncached JWT verification cost, per algorithm, for any checkout of this repository.

Two figures per algorithm (RS256 with RSA-2048, ES256 with P-256), same token and JWK:

* ``signature``: ``parse_jwt`` + ``check_signature`` (token parse and key search +
  signature check);
* ``authenticate``: one ``JwtAuthenticator.authenticate`` with the token cache off
  (``cache_size=0``), i.e. extraction, every check, output headers and the token's
  dynamic metadata: a fresh token's cost. Checkouts whose results carry no
  ``metadata`` built it in ``services.authz.service._metadata_for``; that call is
  timed with them, so both sides do the same work.

One checkout (the one on ``PYTHONPATH``)::

    PYTHONPATH=/work/main .venv/bin/python loadtest/jwt_verify_bench.py

Side by side, alternating the checkouts round by round on one set of keys, with the
median of the rounds' medians::

    .venv/bin/python loadtest/jwt_verify_bench.py --compare /work/base /work/main --rounds 7

The same two checkouts, counted in CPU instructions by callgrind (repeatable on a busy
machine, where the timings above drift by tens of percent)::

    .venv/bin/python loadtest/jwt_verify_bench.py --compare /work/base /work/main --instructions 300
"""

import argparse
import asyncio
import base64
import functools
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://bench.example.com"
NOW = 1_700_000_000
LOOPS, REPEATS = 300, 7


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    return _b64(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


def _setup(keys_file: Path) -> dict[str, tuple[str, str]]:
    """``{alg: (token, jwks)}`` signed with the private keys in ``keys_file``."""
    pems = json.loads(keys_file.read_text())
    cases: dict[str, tuple[str, str]] = {}
    payload = {"iss": ISSUER, "sub": "bench", "aud": "api", "exp": NOW + 3600, "scope": "a b"}
    for alg, pem in pems.items():
        key: Any = serialization.load_pem_private_key(pem.encode(), password=None)
        header = _b64(json.dumps({"alg": alg, "kid": "k", "typ": "JWT"}).encode())
        signing_input = f"{header}.{_b64(json.dumps(payload).encode())}".encode()
        if isinstance(key, rsa.RSAPrivateKey):
            sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
            numbers = key.public_key().public_numbers()
            jwk = {"kty": "RSA", "kid": "k", "n": _uint(numbers.n), "e": _uint(numbers.e)}
        else:
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
            point = key.public_key().public_numbers()
            jwk = {"kty": "EC", "kid": "k", "crv": "P-256"}
            jwk |= {"x": _uint(point.x, 32), "y": _uint(point.y, 32)}
        cases[alg] = (f"{signing_input.decode()}.{_b64(sig)}", json.dumps({"keys": [jwk]}))
    return cases


def _median_us(run: Any) -> float:
    return statistics.median(timeit.repeat(run, number=LOOPS, repeat=REPEATS)) / LOOPS * 1e6


async def _authenticate_us(token: str, jwks: str) -> float:
    from services.authz.jwt import authenticate as authn_module
    from services.authz.jwt.rules import JwtRule
    from services.authz.model import HttpRequest
    from services.clock import ManualClock

    rule = JwtRule(issuer=ISSUER, jwks=jwks)
    try:
        from services.authz.jwt.plan import compile_jwt_plan
    except ImportError:  # a checkout from before compiled plans: rules are passed as-is
        rules: Any = (rule,)
    else:
        rules = compile_jwt_plan([rule])
    authn = authn_module.JwtAuthenticator(clock=ManualClock(NOW), cache_size=0)
    request = HttpRequest(host="api", path="/", headers={"authorization": f"Bearer {token}"})
    result = await authn.authenticate(rules, request)
    assert result.status == "ok"
    metadata_for: Any = None
    if getattr(result, "metadata", None) is None:
        metadata_for = importlib.import_module("services.authz.service")._metadata_for
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(LOOPS):
            result = await authn.authenticate(rules, request)
            if metadata_for is not None:
                metadata_for(result)
        samples.append((time.perf_counter() - start) / LOOPS * 1e6)
    return statistics.median(samples)


def measure(keys_file: Path) -> dict[str, float]:
    """``{"RS256 signature": us, "RS256 authenticate": us, ...}`` for this checkout."""
    from services.authz.jwt import verify
    from services.authz.jwt.jwks import parse_jwks

    check_signature = verify.check_signature
    parse: Any = verify.parse_jwt  # older checkouts cache headers inside parse_jwt
    if hasattr(verify, "HeaderCache"):  # newer ones in the authenticator's HeaderCache
        headers = verify.HeaderCache()
        parse = functools.partial(verify.parse_jwt, header=headers)

    figures: dict[str, float] = {}
    for alg, (token, jwks) in _setup(keys_file).items():
        keys = parse_jwks(jwks)
        check_signature(parse(token), keys)  # raises if the setup is wrong
        figures[f"{alg} signature"] = _median_us(
            lambda token=token, keys=keys: check_signature(parse(token), keys)
        )
        figures[f"{alg} authenticate"] = asyncio.run(_authenticate_us(token, jwks))
    return figures


def _write_keys(path: Path) -> None:
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    keys: dict[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }
    path.write_text(
        json.dumps({alg: k.private_bytes(pem, private, none).decode() for alg, k in keys.items()})
    )


def compare(checkouts: list[str], rounds: int) -> None:
    """Run each checkout in its own process, alternating, and print the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        keys_file = Path(tmp) / "keys.json"
        _write_keys(keys_file)
        results: dict[str, list[dict[str, float]]] = {c: [] for c in checkouts}
        for number in range(rounds):
            for checkout in checkouts if number % 2 == 0 else reversed(checkouts):
                env = {**os.environ, "PYTHONPATH": checkout}
                out = subprocess.run(
                    [sys.executable, __file__, "--keys", str(keys_file), "--json"],
                    env=env,
                    cwd=checkout,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[checkout].append(json.loads(out))
    names = list(results[checkouts[0]][0])
    print(f"median of {rounds} rounds (each the median of {REPEATS} x {LOOPS} calls), us/call")
    print(f"{'':22}" + "".join(f"{c:>16}" for c in checkouts))
    for name in names:
        cells = "".join(
            f"{statistics.median(r[name] for r in results[c]):>16.2f}" for c in checkouts
        )
        print(f"{name:22}{cells}")


def _authenticate_calls(keys_file: Path, alg: str, calls: int) -> None:
    """Set up, then make ``calls`` uncached authenticate calls (for callgrind to count)."""
    global LOOPS, REPEATS
    token, jwks = _setup(keys_file)[alg]
    LOOPS, REPEATS = max(1, calls), 1
    if calls:
        asyncio.run(_authenticate_us(token, jwks))


def count_instructions(checkouts: list[str], calls: int) -> None:
    """Instructions per uncached authenticate, by callgrind: a run of ``calls`` calls
    minus a run of one, over ``calls - 1``. The same on a busy machine as on an idle one."""
    with tempfile.TemporaryDirectory() as tmp:
        keys_file = Path(tmp) / "keys.json"
        _write_keys(keys_file)
        print(f"callgrind: instructions per uncached authenticate ({calls} calls)")
        print(f"{'':22}" + "".join(f"{c:>16}" for c in checkouts))
        for alg in ("RS256", "ES256"):
            cells = ""
            for checkout in checkouts:
                counted = []
                for n in (1, calls):
                    done = subprocess.run(
                        [
                            "valgrind",
                            "--tool=callgrind",
                            "--callgrind-out-file=/dev/null",
                            sys.executable,
                            __file__,
                            "--keys",
                            str(keys_file),
                            "--calls",
                            f"{alg}:{n}",
                        ],
                        env={**os.environ, "PYTHONPATH": checkout, "PYTHONHASHSEED": "0"},
                        cwd=checkout,
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    found = re.search(r"Collected : (\d+)", done.stderr)
                    assert found is not None, done.stderr[-2000:]
                    counted.append(int(found.group(1)))
                cells += f"{(counted[1] - counted[0]) / (calls - 1):>16,.0f}"
            print(f"{alg + ' authenticate':22}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", nargs="+", metavar="CHECKOUT", help="checkout roots")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=Path, help="private keys (JSON of PEMs) to sign with")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="CALLS",
        help="with --compare: count instructions with callgrind over CALLS calls instead",
    )
    parser.add_argument("--calls", help=argparse.SUPPRESS)  # ALG:N, for --instructions
    args = parser.parse_args()
    if args.calls:
        alg, calls = args.calls.split(":")
        _authenticate_calls(args.keys, alg, int(calls))
        return
    if args.compare and args.instructions:
        count_instructions(args.compare, args.instructions)
        return
    if args.compare:
        compare(args.compare, args.rounds)
        return
    if args.keys is None:
        with tempfile.TemporaryDirectory() as tmp:
            keys_file = Path(tmp) / "keys.json"
            _write_keys(keys_file)
            figures = measure(keys_file)
    else:
        figures = measure(args.keys)
    if args.json:
        print(json.dumps(figures))
        return
    import services

    print(f"checkout: {Path(services.__file__).parent.parent}")
    for name, value in figures.items():
        print(f"{name:22}{value:8.2f} us")


if __name__ == "__main__":
    main()
