"""A gateway stack for end-to-end tests: ``mixerless serve`` plus a real Envoy fed ONLY over xDS.

``start_stack`` writes a policy directory (a MeshConfig, the demo RequestAuthentication,
AuthorizationPolicies for the test scenarios, a ``Gateway`` and a ``RateLimitPolicy``),
starts ``mixerless serve`` on free ports (xDS included), asks ``mixerless bootstrap`` for
the Envoy bootstrap (the CLI, in a subprocess) and starts Envoy with it. The bootstrap
holds nothing but the xDS cluster: every listener, route and cluster Envoy serves comes
from mixerless. The stack is ready once the gateway answers ``/healthz``.

``ProviderThread`` runs a ``tests.providers.HttpAuthzServer`` (a real ext_authz HTTP
provider) on its own event loop, so synchronous tests can program and inspect it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from tests.e2e.conftest import Launcher
from tests.envoy_proc import (
    EnvoyProcess,
    HttpResponse,
    MixerlessProcess,
    Upstream,
    find_mixerless,
    free_port,
    http_request,
    wait_until,
    write_file_atomically,
)
from tests.providers import HttpAuthzServer, HttpReply, SeenRequest

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOKENS = ROOT / "deploy" / "demo"
NAMESPACE = "istio-system"
GATEWAY = "edge"  # the Gateway's name, and so its rate limit domain
QUOTA_POLICY = "product-per-user"
QUOTA_KEY = f"{NAMESPACE}/{QUOTA_POLICY}"  # the generic_key value of the quota's descriptor
PROVIDER = "orders-authz"
OFFICE = "203.0.113.0/24"
RELOAD = "100ms"
XDS_CLUSTER = "mixerless_xds"  # the bootstrap's one static cluster

# File names inside the policy directory.
GATEWAY_FILE = "gateway/edge.yaml"
QUOTA_FILE = "gateway/quota.yaml"
EDITABLE_FILE = "authz/editable.yaml"


def token(name: str) -> str:
    """A pre-minted demo JWT (``alice``, ``bob``, ``expired``, ``wrong-audience``)."""
    return (DEMO_TOKENS / f"{name}.jwt").read_text().strip()


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(name)}"}


# --- policy documents -------------------------------------------------------------------


def mesh_yaml(provider_port: int | None) -> str:
    """One trusted proxy in front of the gateway; the HTTP provider when there is one."""
    text = """\
apiVersion: mixerless.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  defaultConfig:
    gatewayTopology:
      numTrustedProxies: 1
"""
    if provider_port is not None:
        text += f"""\
  extensionProviders:
  - name: {PROVIDER}
    envoyExtAuthzHttp:
      service: 127.0.0.1
      port: {provider_port}
      timeout: 2s
      headersToUpstreamOnAllow: [x-orders-user]
      headersToDownstreamOnDeny: [x-orders-reason]
"""
    return text


OFFICE_ONLY = f"""\
# /internal is for the office network only (the client address past one trusted proxy).
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: internal-office-only
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: DENY
  rules:
  - from:
    - source:
        notRemoteIpBlocks: ["{OFFICE}"]
    to:
    - operation:
        paths: ["/internal", "/internal/*"]
"""

ORDERS_CUSTOM = f"""\
# The external provider decides about /orders only.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: orders-ext-authz
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: CUSTOM
  provider:
    name: {PROVIDER}
  rules:
  - to:
    - operation:
        paths: ["/orders/*"]
"""


def deny_paths_yaml(*paths: str) -> str:
    """The editable DENY policy: refuses ``paths`` (no path given: a path nobody uses)."""
    listed = ", ".join(f'"{p}"' for p in (paths or ("/never-used",)))
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: editable-deny
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: DENY
  rules:
  - to:
    - operation:
        paths: [{listed}]
"""


def gateway_yaml(node: str, listen_port: int, upstream_port: int) -> str:
    """The Gateway: a health route without authz, /product (quota), everything else."""
    backend = f'backend: {{endpoints: ["127.0.0.1:{upstream_port}"]}}'
    return f"""\
apiVersion: mixerless.io/v1alpha1
kind: Gateway
metadata:
  name: {GATEWAY}
  namespace: {NAMESPACE}
  labels:
    istio: ingressgateway
spec:
  nodes: [{node}]
  listeners:
  - name: http
    port: {listen_port}
    address: 127.0.0.1
    hosts: ["*"]
  routes:
  - name: health
    match: {{exact: /healthz}}
    {backend}
    authz: false
  - name: products
    match: {{prefix: /product}}
    {backend}
    timeout: 15s
  - name: default
    match: {{prefix: /}}
    {backend}
    timeout: 15s
"""


QUOTA = f"""\
apiVersion: mixerless.io/v1alpha1
kind: RateLimitPolicy
metadata:
  name: {QUOTA_POLICY}
  namespace: {NAMESPACE}
spec:
  targetRef: {{kind: Gateway, name: {GATEWAY}}}
  routes: [products]
  match:
    paths: ["/product", "/product/*"]
  limit: {{requests: 100, unit: minute}}
  countBy: {{subject: {{}}}}
"""


def policy_files(
    *, node: str, listen_port: int, upstream_port: int, provider_port: int | None
) -> dict[str, str]:
    """Every file of a stack's policy directory, by relative name."""
    files = {
        "mesh.yaml": mesh_yaml(provider_port),
        "authz/gateway-jwt.yaml": (ROOT / "policies/authz/gateway-jwt.yaml").read_text(),
        "authz/gateway-access.yaml": (ROOT / "policies/authz/gateway-access.yaml").read_text(),
        "authz/office-only.yaml": OFFICE_ONLY,
        EDITABLE_FILE: deny_paths_yaml(),
        GATEWAY_FILE: gateway_yaml(node, listen_port, upstream_port),
        QUOTA_FILE: QUOTA,
    }
    if provider_port is not None:
        files["authz/orders-custom.yaml"] = ORDERS_CUSTOM
    return files


# --- the external provider ----------------------------------------------------------------


def orders_decision(seen: SeenRequest) -> HttpReply:
    """Allow every /orders request except paths containing ``deny``."""
    if "deny" in seen.target:
        return HttpReply(403, [("x-orders-reason", "not your order")], b"orders: denied")
    return HttpReply(200, [("x-orders-user", "from-provider")])


class ProviderThread:
    """An ``HttpAuthzServer`` on an event loop of its own, in a daemon thread."""

    def __init__(self, reply: Callable[[SeenRequest], HttpReply] = orders_decision) -> None:
        self.server = HttpAuthzServer(reply=reply)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="e2e-http-provider", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> ProviderThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def requests(self) -> list[SeenRequest]:
        """A copy of every request the provider received so far."""
        return list(self.server.requests)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# --- the stack ----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MIXERLESS_")}


def render_bootstrap(policies: Path, *, xds_port: int, admin_port: int) -> str:
    """``mixerless bootstrap`` for the stack's gateway, run as the CLI."""
    command = [
        find_mixerless(),
        "bootstrap",
        "--gateway",
        GATEWAY,
        "--policies",
        str(policies),
        "--xds-port",
        str(xds_port),
        "--advertise-address",
        "127.0.0.1",
        "--admin-port",
        str(admin_port),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env=_environment(), timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def mixerless_args(policies: Path, xds_port: int) -> list[str]:
    return ["--policies", str(policies), "--xds-port", str(xds_port), "--reload-interval", RELOAD]


@dataclass
class GatewayStack:
    """One gateway: its policy directory, mixerless, Envoy, the echo upstream."""

    launcher: Launcher
    policies: Path
    mixerless: MixerlessProcess
    envoy: EnvoyProcess
    upstream: Upstream
    port: int  # the gateway listener
    xds_port: int
    node: str
    provider: ProviderThread | None = None
    mixerless_extra: tuple[str, ...] = ()  # passed to every mixerless start

    def request(
        self, path: str, headers: Mapping[str, str] | None = None, *, method: str = "GET"
    ) -> HttpResponse:
        """One request through the gateway, on a fresh connection."""
        return http_request(self.port, path, method=method, headers=headers)

    def write(self, name: str, text: str) -> None:
        """Replace one policy file atomically."""
        write_file_atomically(self.policies / name, text)

    def debug_config(self) -> dict[str, Any]:
        response = self.mixerless.get("/debug/config")
        assert response.status == 200, response
        return dict(response.json())

    def metrics(self) -> dict[str, float]:
        """mixerless's Prometheus samples, ``name{labels}`` -> value."""
        samples: dict[str, float] = {}
        for line in self.mixerless.get("/metrics").text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def config_dump(self) -> dict[str, Any]:
        return dict(json.loads(self.envoy.admin("/config_dump")))

    def dump_section(self, kind: str) -> dict[str, Any]:
        """The config_dump entry of ``kind`` (``ListenersConfigDump``, ...)."""
        for entry in self.config_dump()["configs"]:
            if entry["@type"].endswith("." + kind):
                return dict(entry)
        raise AssertionError(f"no {kind} in Envoy's config_dump")

    def xds_counters(self) -> dict[str, int]:
        """Envoy's xDS update counters: LDS, CDS, RDS and each dynamic cluster's EDS.

        The static xDS cluster is left out: its ``update_*`` count DNS refreshes.
        """
        counters = self.envoy.stats(r"update_(success|rejected|attempt|failure|empty)$")
        return {k: v for k, v in counters.items() if not k.startswith(f"cluster.{XDS_CLUSTER}.")}

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Wait until the gateway routes ``/healthz`` (xDS delivered)."""
        if not wait_until(lambda: self.request("/healthz").status == 200, timeout=timeout):
            raise RuntimeError(
                f"the gateway did not answer /healthz within {timeout:.0f}s\n"
                f"{self.mixerless.describe()}\n{self.envoy.describe()}"
            )

    def describe(self) -> str:
        return f"{self.mixerless.describe()}\n{self.envoy.describe()}"


def start_stack(
    launcher: Launcher,
    upstream: Upstream,
    *,
    provider: ProviderThread | None = None,
    mixerless_extra: tuple[str, ...] = (),
) -> GatewayStack:
    """Policies, ``mixerless serve`` (xDS on a free port), then Envoy from the bootstrap."""
    node = f"e2e-{uuid4().hex[:12]}"
    listen_port, xds_port, admin_port = free_port(), free_port(), free_port()
    policies = launcher.policy_dir(
        policy_files(
            node=node,
            listen_port=listen_port,
            upstream_port=upstream.port,
            provider_port=None if provider is None else provider.port,
        )
    )
    mixerless = launcher.mixerless([*mixerless_args(policies, xds_port), *mixerless_extra])
    config = render_bootstrap(policies, xds_port=xds_port, admin_port=admin_port)
    envoy = launcher.envoy(config, admin_port=admin_port)
    stack = GatewayStack(
        launcher,
        policies,
        mixerless,
        envoy,
        upstream,
        listen_port,
        xds_port,
        node,
        provider,
        mixerless_extra,
    )
    stack.wait_serving()
    return stack


def restart_mixerless(stack: GatewayStack) -> MixerlessProcess:
    """Start ``mixerless serve`` again on the SAME ports as the stack's (stopped) one."""
    old = stack.mixerless
    args = [
        *mixerless_args(stack.policies, stack.xds_port),
        "--http-port",
        str(old.http_port),
        "--ratelimit-port",
        str(old.ratelimit_port),
        "--authz-port",
        str(old.authz_port),
        *stack.mixerless_extra,
    ]
    if old.workers > 1:  # the same worker ports too: the same endpoints for Envoy
        args += ["--worker-port-base", str(old.worker_port_base)]
    stack.mixerless = stack.launcher.mixerless(args)
    return stack.mixerless


def new_marker() -> str:
    return uuid4().hex
