"""``directResponse`` routes through a real Envoy configured by mixerless over xDS alone.

One stack for the module: the policies of ``gateway_stack`` with a Gateway that adds two
direct-response routes. ``notice`` answers ``/api/notice`` itself (a path the demo
AuthorizationPolicies protect: a token is required); ``teapot`` answers
``/public/teapot`` with a base64-given body. Neither has a cluster. A RateLimitPolicy
for every route limits ``/api/*`` to ``API_LIMIT`` calls a minute per verified subject:
the Check counts it on every route, direct responses included, although Envoy's own rate
limit filter could not (the last test checks that against Envoy itself, with no mixerless
config in between).
"""

import base64
from typing import Any
from uuid import uuid4

import pytest

from tests.e2e.conftest import Launcher
from tests.e2e.gateway_stack import (
    GATEWAY,
    GATEWAY_FILE,
    NAMESPACE,
    QUOTA_FILE,
    GatewayStack,
    bearer,
    mixerless_args,
    policy_files,
    render_bootstrap,
)
from tests.envoy_proc import (
    Upstream,
    free_port,
    http_listener_bootstrap,
    http_request,
    static_cluster,
    wait_for_fresh_window,
)

NOTICE = "notice board: back at 9"
TEAPOT = b"short and stout\n"
API_LIMIT = 3
RATELIMIT = "envoy.filters.http.ratelimit"
_T = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3."
# A hand-written domain that refuses every request carrying (generic_key, refuse).
REFUSE_ALL = """\
domain: refuse-all
descriptors:
- key: generic_key
  value: refuse
  rate_limit: {unit: minute, requests_per_unit: 0}
"""


def direct_gateway_yaml(node: str, listen_port: int, upstream_port: int) -> str:
    """Health and default go to the upstream; notice and teapot are answered by Envoy."""
    backend = f'backend: {{endpoints: ["127.0.0.1:{upstream_port}"]}}'
    teapot = base64.b64encode(TEAPOT).decode("ascii")
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
  routes:
  - name: health
    match: {{exact: /healthz}}
    {backend}
    authz: false
  - name: notice
    match: {{prefix: /api/notice}}
    directResponse: {{status: 200, body: {{string: "{NOTICE}"}}}}
  - name: teapot
    match: {{exact: /public/teapot}}
    directResponse:
      status: 418
      body: {{bytes: "{teapot}"}}
  - name: default
    {backend}
"""


API_QUOTA = f"""\
apiVersion: mixerless.io/v1alpha1
kind: RateLimitPolicy
metadata:
  name: api-per-user
  namespace: {NAMESPACE}
spec:
  targetRef: {{kind: Gateway, name: {GATEWAY}}}
  match: {{paths: ["/api/*"]}}
  limit: {{requests: {API_LIMIT}, unit: minute}}
  countBy: {{subject: {{}}}}
"""


@pytest.fixture(scope="module", name="stack")
def fixture_stack(module_launcher: Launcher, upstream: Upstream) -> GatewayStack:
    node = f"e2e-{uuid4().hex[:12]}"
    listen_port, xds_port, admin_port = free_port(), free_port(), free_port()
    files = policy_files(
        node=node, listen_port=listen_port, upstream_port=upstream.port, provider_port=None
    )
    files[GATEWAY_FILE] = direct_gateway_yaml(node, listen_port, upstream.port)
    files[QUOTA_FILE] = API_QUOTA
    files["ratelimit/refuse-all.yaml"] = REFUSE_ALL
    policies = module_launcher.policy_dir(files)
    mixerless = module_launcher.mixerless(mixerless_args(policies, xds_port))
    config = render_bootstrap(policies, xds_port=xds_port, admin_port=admin_port)
    envoy = module_launcher.envoy(config, admin_port=admin_port)
    stack = GatewayStack(
        module_launcher, policies, mixerless, envoy, upstream, listen_port, xds_port, node
    )
    stack.wait_serving()
    return stack


def _routes(stack: GatewayStack) -> dict[str, dict[str, Any]]:
    configs = stack.dump_section("RoutesConfigDump").get("dynamic_route_configs", [])
    return {
        route["name"]: route
        for config in configs
        for host in config["route_config"]["virtual_hosts"]
        for route in host["routes"]
    }


def refuse_all_config(listen_port: int, admin_port: int, stack: GatewayStack) -> str:
    """Static Envoy: /direct is a direct_response, /routed goes upstream; both ask for
    ``(generic_key, refuse)`` through ``RateLimitPerRoute.rate_limits``."""
    per_route = {
        RATELIMIT: {
            "@type": _T + "RateLimitPerRoute",
            "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "refuse"}}]}],
        }
    }
    routes = [
        {
            "match": {"path": "/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "direct"}},
            "typed_per_filter_config": per_route,
        },
        {
            "match": {"path": "/routed"},
            "route": {"cluster": "upstream"},
            "typed_per_filter_config": per_route,
        },
    ]
    ratelimit = {
        "name": RATELIMIT,
        "typed_config": {
            "@type": _T + "RateLimit",
            "domain": "refuse-all",
            "failure_mode_deny": True,
            "timeout": "1s",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}},
            },
        },
    }
    return http_listener_bootstrap(
        name="refuse",
        listen_port=listen_port,
        admin_port=admin_port,
        routes=routes,
        http_filters=[ratelimit],
        clusters=[
            static_cluster("upstream", stack.upstream.port),
            static_cluster("rls", stack.mixerless.ratelimit_port, http2=True),
        ],
    )


@pytest.mark.envoy
class TestDirectResponse:
    def test_answers_its_status_and_body(self, stack: GatewayStack) -> None:
        """Envoy answers a directResponse route with its status and (string or bytes) body."""
        before = len(stack.upstream.requests())
        notice = stack.request("/api/notice", bearer("bob"))
        assert (notice.status, notice.text()) == (200, NOTICE), notice
        teapot = stack.request("/public/teapot")
        assert (teapot.status, teapot.body) == (418, TEAPOT), teapot
        assert len(stack.upstream.requests()) == before  # the upstream saw neither

    def test_ext_authz_still_decides(self, stack: GatewayStack) -> None:
        """A protected directResponse path without a valid token is refused by ext_authz."""
        reply = stack.request("/api/notice")
        assert (reply.status, reply.text()) == (403, "RBAC: access denied"), reply
        expired = stack.request("/api/notice", bearer("expired"))
        assert (expired.status, expired.text()) == (401, "Jwt is expired"), expired

    def test_every_route_quota_counts_direct_responses_in_the_check(
        self, stack: GatewayStack
    ) -> None:
        """A policy for every route counts /api/notice in its Check, on alice's one counter."""
        wait_for_fresh_window(60, at_least=10)
        notices = [stack.request("/api/notice", bearer("alice")) for _ in range(API_LIMIT + 1)]
        assert [r.status for r in notices] == [200] * API_LIMIT + [429], notices
        assert notices[0].text() == NOTICE
        assert notices[0].headers["x-ratelimit-remaining"] == str(API_LIMIT - 1)
        assert notices[-1].headers["x-envoy-ratelimited"] == "true"
        assert stack.request("/api/orders", bearer("alice")).status == 429  # the same counter
        assert stack.request("/api/orders", bearer("bob")).status == 200

    def test_no_cluster_and_no_rate_limits(self, stack: GatewayStack) -> None:
        """Envoy holds notice as a direct_response with ext_authz context, no cluster, no limits."""
        routes = _routes(stack)
        notice = routes["notice"]
        assert notice["direct_response"]["status"] == 200 and "route" not in notice
        assert set(notice["typed_per_filter_config"]) == {"envoy.filters.http.ext_authz"}
        authz = notice["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert "context_extensions" in authz["check_settings"]  # config_dump redacts values
        assert "rate_limits" not in routes["default"]["route"]  # its quota is counted in Check
        clusters = stack.dump_section("ClustersConfigDump").get("dynamic_active_clusters", [])
        names = {c["cluster"]["name"] for c in clusters}
        assert f"{GATEWAY}/default" in names
        assert not {f"{GATEWAY}/notice", f"{GATEWAY}/teapot"} & names

    def test_envoy_does_not_rate_limit_a_direct_response(
        self, stack: GatewayStack, module_launcher: Launcher
    ) -> None:
        """Envoy ignores RateLimitPerRoute on a direct_response route (why mixerless refuses it).

        If this fails, Envoy learnt to rate limit such routes: the load error can go.
        """
        listen_port, admin_port = free_port(), free_port()
        config = refuse_all_config(listen_port, admin_port, stack)
        module_launcher.envoy(config, admin_port=admin_port)
        assert http_request(listen_port, "/routed").status == 429  # the limit is live
        direct = http_request(listen_port, "/direct")
        assert (direct.status, direct.text()) == (200, "direct"), direct
