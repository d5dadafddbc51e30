"""Envoy's ratelimit filter asking ``mixerless serve``: real processes, static config.

Envoy listens on a free port with ``envoy.filters.http.ratelimit`` (domain ``edge``,
``failure_mode_deny``, DRAFT_VERSION_03 headers) in front of the router. The default
route sends the descriptor ``[(user, <x-user-id>)]``; ``/product`` sends
``[(generic_key, product), (user, <x-user-id>)]``. Limits come from a YAML file in a
temporary policy directory. Counters are per fixed minute window, so every test uses
fresh user ids and starts its burst early enough in a window to finish inside it.
"""

from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from tests.e2e.conftest import Launcher
from tests.envoy_proc import (
    EnvoyProcess,
    HttpResponse,
    MixerlessProcess,
    Upstream,
    free_port,
    http_listener_bootstrap,
    http_request,
    static_cluster,
    wait_for_fresh_window,
    wait_until,
    write_file_atomically,
)

DOMAIN = "edge"
UPSTREAM_CLUSTER = "upstream"
RLS_CLUSTER = "mixerless_rls"
RATELIMIT_STATS = rf"^cluster\.{UPSTREAM_CLUSTER}\.ratelimit\."
OK_STAT = f"cluster.{UPSTREAM_CLUSTER}.ratelimit.ok"
OVER_LIMIT_STAT = f"cluster.{UPSTREAM_CLUSTER}.ratelimit.over_limit"
ERROR_STAT = f"cluster.{UPSTREAM_CLUSTER}.ratelimit.error"
FAILURE_ALLOWED_STAT = f"cluster.{UPSTREAM_CLUSTER}.ratelimit.failure_mode_allowed"
RELOAD_INTERVAL = "100ms"
# Room left in the current minute window before a burst (each burst takes well under 1 s).
BURST_MARGIN_SECONDS = 3.0


def edge_policy(user_limit: int = 3) -> str:
    """The ``edge`` domain: ``user_limit``/min per user, vip 10/min, /product 5/min per user."""
    return f"""\
domain: {DOMAIN}
descriptors:
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: {user_limit}
  - key: user
    value: vip
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: generic_key
    value: product
    descriptors:
      - key: user
        rate_limit:
          unit: minute
          requests_per_unit: 5
"""


def user_action() -> dict[str, object]:
    return {"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}


def edge_envoy_config(
    *, listen_port: int, admin_port: int, upstream_port: int, rls_port: int
) -> str:
    """A static bootstrap: HTTP listener -> ratelimit filter (gRPC to mixerless) -> router."""
    routes = [
        {
            "match": {"prefix": "/product"},
            "route": {
                "cluster": UPSTREAM_CLUSTER,
                "rate_limits": [
                    {"actions": [{"generic_key": {"descriptor_value": "product"}}, user_action()]}
                ],
            },
        },
        {
            "match": {"prefix": "/"},
            "route": {"cluster": UPSTREAM_CLUSTER, "rate_limits": [{"actions": [user_action()]}]},
        },
    ]
    ratelimit_filter = {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": DOMAIN,
            "failure_mode_deny": True,
            "timeout": "1s",
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
            },
        },
    }
    return http_listener_bootstrap(
        name="edge",
        listen_port=listen_port,
        admin_port=admin_port,
        routes=routes,
        http_filters=[ratelimit_filter],
        clusters=[
            static_cluster(UPSTREAM_CLUSTER, upstream_port),
            static_cluster(RLS_CLUSTER, rls_port, http2=True),
        ],
    )


@dataclass
class EdgeStack:
    """One Envoy in front of the echo upstream, rate limited by one mixerless."""

    envoy: EnvoyProcess
    mixerless: MixerlessProcess
    upstream: Upstream
    policy_file: Path
    port: int

    def get(self, path: str, user: str | None) -> HttpResponse:
        """GET ``path`` through Envoy, as ``user`` (the ``x-user-id`` header) if given."""
        headers = {} if user is None else {"x-user-id": user}
        return http_request(self.port, path, headers=headers)

    def burst(self, path: str, user: str, count: int) -> list[HttpResponse]:
        """``count`` GETs of ``path`` as ``user``, one after the other."""
        return [self.get(path, user) for _ in range(count)]

    def describe(self) -> str:
        """Both processes' logs, for assertion messages."""
        return f"{self.envoy.describe()}\n{self.mixerless.describe()}"


def start_edge(launcher: Launcher, upstream: Upstream) -> EdgeStack:
    """mixerless serving ``edge_policy()``, then an Envoy asking it."""
    policies = launcher.policy_dir({"edge.yaml": edge_policy()})
    args = ["--policies", str(policies), "--reload-interval", RELOAD_INTERVAL]
    mixerless = launcher.mixerless([*args, "--shutdown-grace", "1s"])
    listen_port, admin_port = free_port(), free_port()
    config = edge_envoy_config(
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream.port,
        rls_port=mixerless.ratelimit_port,
    )
    envoy = launcher.envoy(config, admin_port=admin_port)
    return EdgeStack(envoy, mixerless, upstream, policies / "edge.yaml", listen_port)


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher, upstream: Upstream) -> EdgeStack:
    """The stack shared by tests that neither edit its policy nor stop its processes."""
    return start_edge(module_launcher, upstream)


@pytest.fixture
def private_edge(launcher: Launcher, upstream: Upstream) -> EdgeStack:
    """A stack of the test's own, for tests that edit the policy or stop mixerless."""
    return start_edge(launcher, upstream)


def new_user(label: str) -> str:
    """A user id no other test (or earlier run in this minute) has used."""
    return f"{label}-{uuid4().hex[:10]}"


def statuses(answers: list[HttpResponse]) -> list[int]:
    return [answer.status for answer in answers]


def header(answers: list[HttpResponse], name: str) -> list[str | None]:
    return [answer.headers.get(name) for answer in answers]


@pytest.mark.envoy
class TestEnvoyRateLimit:
    def test_fourth_request_in_a_minute_gets_429_with_ratelimit_headers(
        self, edge: EdgeStack
    ) -> None:
        """3/min per user: 200, 200, 200 (remaining 2, 1, 0), then 429 with every header."""
        user = new_user("fourth")
        wait_for_fresh_window(at_least=BURST_MARGIN_SECONDS)

        answers = edge.burst("/", user, 4)

        assert statuses(answers) == [200, 200, 200, 429], edge.describe()
        assert header(answers, "x-ratelimit-limit") == ["3, 3;w=60"] * 4
        assert header(answers, "x-ratelimit-remaining") == ["2", "1", "0", "0"]
        for answer in answers:
            assert 1 <= int(answer.headers["x-ratelimit-reset"]) <= 60, answer
        assert header(answers, "x-envoy-ratelimited") == [None, None, None, "true"]
        assert answers[0].json()["headers"]["x-user-id"] == user
        assert edge.upstream.count("x-user-id", user) == 3, "the 429 must not reach upstream"

    def test_another_user_passes_while_the_first_is_limited(self, edge: EdgeStack) -> None:
        """Each user has a counter of their own: limiting one leaves the others alone."""
        limited, other = new_user("limited"), new_user("other")
        wait_for_fresh_window(at_least=BURST_MARGIN_SECONDS)

        assert statuses(edge.burst("/", limited, 4)) == [200, 200, 200, 429], edge.describe()
        passing = edge.get("/", other)
        still_limited = edge.get("/", limited)

        assert passing.status == 200, passing
        assert passing.headers["x-ratelimit-remaining"] == "2"
        assert still_limited.status == 429, still_limited

    def test_named_override_vip_gets_its_own_higher_limit(self, edge: EdgeStack) -> None:
        """``key: user, value: vip`` (10/min) overrides the default 3/min for that user."""
        wait_for_fresh_window(at_least=BURST_MARGIN_SECONDS)

        answers = edge.burst("/", "vip", 11)

        assert statuses(answers) == [200] * 10 + [429], edge.describe()
        assert header(answers, "x-ratelimit-limit") == ["10, 10;w=60"] * 11
        assert header(answers, "x-ratelimit-remaining") == [str(n) for n in range(9, -1, -1)] + [
            "0"
        ]

    def test_product_route_has_its_own_per_user_quota(self, edge: EdgeStack) -> None:
        """``/product`` counts (product, user) apart from the default route's (user)."""
        user = new_user("product")
        wait_for_fresh_window(at_least=BURST_MARGIN_SECONDS)

        default_route = edge.burst("/", user, 4)
        product_route = edge.burst("/product/42", user, 6)
        default_again = edge.get("/", user)

        assert statuses(default_route) == [200, 200, 200, 429], edge.describe()
        assert statuses(product_route) == [200] * 5 + [429], edge.describe()
        assert header(product_route, "x-ratelimit-limit") == ["5, 5;w=60"] * 6
        assert header(product_route, "x-ratelimit-remaining") == ["4", "3", "2", "1", "0", "0"]
        assert default_again.status == 429, "the /product calls must not reset the default"

    def test_envoy_stats_count_ok_and_over_limit(self, edge: EdgeStack) -> None:
        """Envoy's ``cluster.<upstream>.ratelimit.ok``/``over_limit`` count the RLS answers."""
        user = new_user("stats")
        wait_for_fresh_window(at_least=BURST_MARGIN_SECONDS)
        before = edge.envoy.stats(RATELIMIT_STATS)

        assert statuses(edge.burst("/", user, 4)) == [200, 200, 200, 429], edge.describe()

        after = edge.envoy.stats(RATELIMIT_STATS)
        delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        assert delta.get(OK_STAT) == 3, after
        assert delta.get(OVER_LIMIT_STAT) == 1, after
        assert delta.get(ERROR_STAT, 0) == 0, after

    def test_policy_edit_applies_without_restart(self, private_edge: EdgeStack) -> None:
        """Rewriting the policy file (atomic rename) changes the limit Envoy enforces live."""
        edge = private_edge
        before = edge.get("/", new_user("before-edit"))
        assert before.headers.get("x-ratelimit-limit") == "3, 3;w=60", edge.describe()

        write_file_atomically(edge.policy_file, edge_policy(user_limit=1))

        def lowered() -> bool:
            answer = edge.get("/", new_user("polling"))
            return answer.headers.get("x-ratelimit-limit") == "1, 1;w=60"

        assert wait_until(lowered, timeout=5.0, interval=0.1), edge.describe()
        user = new_user("after-edit")
        wait_for_fresh_window(at_least=BURST_MARGIN_SECONDS)
        assert statuses(edge.burst("/", user, 2)) == [200, 429], edge.describe()
        assert edge.envoy.process.poll() is None, "Envoy must not have restarted"
        assert edge.mixerless.process.poll() is None, "mixerless must not have restarted"

    def test_rls_down_with_failure_mode_deny_answers_500(self, private_edge: EdgeStack) -> None:
        """With mixerless stopped, ``failure_mode_deny`` rejects with 500 and no upstream call."""
        edge = private_edge
        user = new_user("rls-down")
        assert edge.get("/", user).status == 200, edge.describe()
        before = edge.envoy.stats(RATELIMIT_STATS)

        assert edge.mixerless.stop() == 0, edge.mixerless.describe()
        answer = edge.get("/", user)

        assert answer.status == 500, f"{answer}\n{edge.describe()}"
        assert "x-envoy-ratelimited" not in answer.headers
        assert edge.upstream.count("x-user-id", user) == 1, "the 500 must not reach upstream"
        after = edge.envoy.stats(RATELIMIT_STATS)
        assert after.get(ERROR_STAT, 0) - before.get(ERROR_STAT, 0) == 1, after
        assert after.get(FAILURE_ALLOWED_STAT, 0) == before.get(FAILURE_ALLOWED_STAT, 0)
