"""The Python cost of one decision, counted in CPU instructions: repeatable on a noisy machine.

Throughput through gRPC (``check_load.py``, ``rls_load.py``) is what users get, but on a
shared machine one run differs from the next by tens of percent. This script takes the
network away: it builds the authz or rate limit servicer in-process from a checkout's
code, and sends it serialized requests (decode, decide, encode) on an event loop. Under
``valgrind --tool=callgrind`` the instruction count of that work is the same from one run
to the next, whatever else the machine is doing.

One checkout (the one on ``PYTHONPATH``), timed by the clock::

    PYTHONPATH=. .venv/bin/python loadtest/inprocess_cost.py --scenario check-cached-jwt

Two checkouts, counted by callgrind (instructions per request: a run of ``--requests``
requests minus a run of none, divided by ``--requests``)::

    .venv/bin/python loadtest/inprocess_cost.py --compare ../base . --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SCENARIOS = ("check-none", "check-cached-jwt", "check-fresh-rs256", "rls-memory", "gateway-mix")
# The k6 gateway scenario's mix (loadtest/k6/gateway.js), as the Checks Envoy sends for it.
GATEWAY_MIX = {"api": 45, "quota": 35, "missing": 6, "expired": 5, "bad_signature": 4}
GATEWAY_MIX |= {"admin": 3, "staff": 2}
GATEWAY_USERS = 50  # the closed loop's VUs, each with its own user


class _Context:
    """Stands in for grpc's ServicerContext: the servicers abort through it, and ask for
    the time left (no deadline here)."""

    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"aborted: {code} {details}")

    def time_remaining(self) -> None:
        return None


class _AsyncContext:
    """The same for checkouts whose servicers ran on grpc.aio (an awaitable abort)."""

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"aborted: {code} {details}")


Call = Any  # async (bytes) -> bytes


def _caller(servicer_class: Any, service: Any, metrics: Any, message: Any, name: str) -> Call:
    """One serialized request in, one serialized answer out, whichever servicer API the
    checkout has: bytes handlers on threads (``Inline``), or grpc.aio's ``Check(request)``."""
    # Not an ImportError test: the editable install resolves a module missing from an
    # older checkout to the working tree's.
    if not hasattr(servicer_class, "handler"):  # checkouts whose servicers ran on grpc.aio
        servicer = servicer_class(service, metrics)
        method = getattr(servicer, name)
        context = _AsyncContext()

        async def call_aio(body: bytes) -> bytes:
            return bytes((await method(message.FromString(body), context)).SerializeToString())

        return call_aio
    from services.inline import Inline

    servicer = servicer_class(service, metrics, Inline(asyncio.get_running_loop()))
    handler = servicer.check if name == "Check" else servicer.should_rate_limit
    sync_context = _Context()

    async def call(body: bytes) -> bytes:
        return bytes(handler(body, sync_context))

    return call


def _load(directory: Path) -> Any:
    try:
        from services.catalog.loader import LoadOptions, load_directory
    except ImportError:  # checkouts before the catalog
        from services.policy.loader import (  # type: ignore[no-redef]
            LoadOptions,
            load_directory,
        )
    return load_directory(directory, LoadOptions())


def _check_servicer(scenario: str, pool: int) -> tuple[Any, list[bytes]]:
    from scenarios import authz

    from services import envoy_api as api
    from services.authz.jwt.authenticate import JwtAuthenticator
    from services.authz.jwt.keys import KeyResolver, RemoteKeySource
    from services.authz.providers.registry import ProviderClients
    from services.authz.service import AuthzService, WorkloadDefaults
    from services.authz.servicer import AuthorizationServicer
    from services.clock import SystemClock
    from services.metrics import Metrics

    key = authz.load_or_create_key(HERE / "out" / "check_load-key.pem")
    directory = Path(tempfile.mkdtemp(prefix="inprocess-"))
    policy_scenario = "none" if scenario == "check-none" else "policies20-cached-jwt"
    for name, text in authz.policy_files(policy_scenario, key).items():
        (directory / name).write_text(text)
    policy_set = _load(directory)
    clock = SystemClock()
    metrics = Metrics()
    jwt = JwtAuthenticator(KeyResolver(remote=RemoteKeySource(clock=clock)), clock)
    service = AuthzService(
        lambda: policy_set.authz, jwt, ProviderClients(), metrics, WorkloadDefaults()
    )
    call = _caller(AuthorizationServicer, service, metrics, api.CheckRequest, "Check")
    if scenario == "check-none":
        tokens: list[str | None] = [None]
    elif scenario == "check-cached-jwt":
        tokens = list(authz.token_pool(key, 1))
    else:  # a fresh token per request (and per warm-up request)
        tokens = list(authz.token_pool(key, pool))
    bodies = [
        authz.check_request(tokens[i % len(tokens)], request_id=authz.request_id(i))
        for i in range(pool)
    ]
    return call, bodies


def _gateway_servicer(pool: int) -> tuple[Any, list[bytes]]:
    """The demo policies with one-hop quotas in memory, as ``mixerless serve`` builds them,
    and the Checks a gateway configured by mixerless sends for the k6 gateway mix (seeded;
    raw header maps, as `encode_raw_headers` makes Envoy send them)."""
    import random

    from harness.stacks import DEMO_POLICIES, gateway_policies
    from harness.tokens import PoolSpec, mint_pool
    from scenarios import authz

    from services import envoy_api as api
    from services.authz.jwt.authenticate import JwtAuthenticator
    from services.authz.jwt.keys import KeyResolver, RemoteKeySource
    from services.authz.providers.registry import ProviderClients
    from services.authz.service import AuthzService, WorkloadDefaults
    from services.authz.servicer import AuthorizationServicer
    from services.clock import SystemClock
    from services.metrics import Metrics
    from services.one_hop import InCheckQuota
    from services.ratelimit.memory_store import InMemoryCounterStore
    from services.ratelimit.service import RateLimitOptions, RateLimitService

    directory = Path(tempfile.mkdtemp(prefix="inprocess-")) / "policies"
    gateway_policies(DEMO_POLICIES, directory, 10000, 10080)
    policy_set = _load(directory)
    clock = SystemClock()
    metrics = Metrics()
    counting = RateLimitService(
        lambda: policy_set.ratelimit,
        InMemoryCounterStore(clock),
        clock,
        metrics,
        RateLimitOptions(),
    )
    jwt = JwtAuthenticator(KeyResolver(remote=RemoteKeySource(clock=clock)), clock)
    service = AuthzService(
        lambda: policy_set.authz,
        jwt,
        ProviderClients(),
        metrics,
        WorkloadDefaults(),
        InCheckQuota(counting),
        clock=clock,
    )
    call = _caller(AuthorizationServicer, service, metrics, api.CheckRequest, "Check")
    tokens = mint_pool(PoolSpec(users=GATEWAY_USERS, staff=2, expired=4, bad_signature=4))
    rand = random.Random(7)
    classes = list(GATEWAY_MIX)
    weights = list(GATEWAY_MIX.values())
    bodies = []
    for number in range(pool):
        name = rand.choices(classes, weights)[0]
        path = {"quota": f"/product/{rand.randint(1, 1000)}", "admin": "/admin"}.get(
            name, "/api/orders"
        )
        if name == "staff":
            path = "/admin"
        token = {
            "missing": None,
            "expired": rand.choice(tokens["expired"]),
            "bad_signature": rand.choice(tokens["bad_signature"]),
            "staff": rand.choice(tokens["staff"])["token"],
        }.get(name, rand.choice(tokens["users"])["token"])
        request = api.CheckRequest.FromString(
            authz.check_request(
                token, request_id=authz.request_id(number), path=path, raw_headers=True
            )
        )
        request.attributes.context_extensions.update(
            {
                "namespace": "istio-system",
                "gateway": "public",
                "labels": "istio=ingressgateway",
                "route": "products" if path.startswith("/product") else "default",
            }
        )
        bodies.append(bytes(request.SerializeToString()))
    return call, bodies


def _rls_servicer(pool: int) -> tuple[Any, list[bytes]]:
    from scenarios import ratelimit

    from services import envoy_api as api
    from services.clock import SystemClock
    from services.metrics import Metrics
    from services.ratelimit.memory_store import InMemoryCounterStore
    from services.ratelimit.service import RateLimitOptions, RateLimitService
    from services.ratelimit.servicer import RateLimitServicer

    directory = Path(tempfile.mkdtemp(prefix="inprocess-"))
    (directory / "ratelimit.yaml").write_text(ratelimit.policy_yaml(10**9, 5))
    policy_set = _load(directory)
    clock = SystemClock()
    metrics = Metrics()
    store = InMemoryCounterStore(clock)
    service = RateLimitService(
        lambda: policy_set.ratelimit, store, clock, metrics, RateLimitOptions()
    )
    call = _caller(RateLimitServicer, service, metrics, api.RateLimitRequest, "ShouldRateLimit")
    bodies = [ratelimit.request_bytes(f"user-{i % 4}", 1) for i in range(pool)]
    return call, bodies


async def _drive(scenario: str, requests: int, pool: int) -> float:
    """Warm up with 50 requests, then send ``requests``; seconds per request.

    ``pool`` requests (and, for fresh tokens, as many tokens) are made whatever
    ``requests`` is, so that runs of different lengths differ only in what is sent.
    """
    pool = max(pool, requests + 50)
    if scenario == "rls-memory":
        call, bodies = _rls_servicer(pool)
    elif scenario == "gateway-mix":
        call, bodies = _gateway_servicer(pool)
    else:
        call, bodies = _check_servicer(scenario, pool)
    for body in bodies[:50]:
        await call(body)
    started = time.perf_counter()
    for body in bodies[50 : 50 + requests]:
        await call(body)
    return (time.perf_counter() - started) / max(1, requests)


def _instructions(tree: Path, scenario: str, requests: int, pool: int) -> int:
    """Instructions callgrind counts for one run of this script against ``tree``."""
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--scenario",
        scenario,
        "--requests",
        str(requests),
        "--pool",
        str(pool),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="check-cached-jwt")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=0, help="requests made (default: enough)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="with --compare: which (comma-separated)"
    )
    args = parser.parse_args()
    if args.compare is None:
        seconds = asyncio.run(_drive(args.scenario, args.requests, args.pool))
        print(f"{args.scenario}: {seconds * 1e6:.1f} µs per request")
        return 0
    before, after = (tree.resolve() for tree in args.compare)
    print(
        "| scenario | before: instructions/request | after: instructions/request | after/before |"
    )
    print("|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        per = {}
        for name, tree in (("before", before), ("after", after)):
            pool = args.requests + 50
            idle = _instructions(tree, scenario, 0, pool)
            busy = _instructions(tree, scenario, args.requests, pool)
            per[name] = (busy - idle) / args.requests
        ratio = per["after"] / per["before"]
        print(f"| {scenario} | {per['before']:,.0f} | {per['after']:,.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
