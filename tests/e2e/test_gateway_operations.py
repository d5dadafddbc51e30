"""Operational guarantees of the xds service, through a real Envoy configured only over xDS.

Every test here changes its stack (policy files, the mixerless process), so each class
gets a stack of its own: a policy edit under traffic, invalid Gateways that must never
reach Envoy, and a mixerless restart that must not make Envoy rebuild anything.
"""

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Launcher
from tests.e2e.gateway_stack import (
    EDITABLE_FILE,
    GATEWAY_FILE,
    GatewayStack,
    bearer,
    deny_paths_yaml,
    gateway_yaml,
    restart_mixerless,
    start_stack,
)
from tests.envoy_proc import Upstream, http_request, wait_until

CHANGE_DEADLINE = 1.0  # seconds from the policy write to the new decision
# With workers: how long after the first new decision another worker may still answer
# the old one (its next poll, 100 ms here, plus loading; generous for a busy machine).
WORKER_RELOAD_SKEW = 0.5
RESTARTS = 3  # a restart re-rolls whatever differs from one process to the next


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request of the background traffic: when it was sent, answered, and how."""

    sent: float
    answered: float
    status: int | None  # None: a connection error
    error: str = ""


class Traffic:
    """GET ``path`` through the gateway every ``interval`` seconds, in a thread."""

    def __init__(self, port: int, path: str, interval: float = 0.02) -> None:
        self.port, self.path, self.interval = port, path, interval
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-traffic", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                status: int | None = http_request(self.port, self.path, timeout=5).status
                error = ""
            except (OSError, http.client.HTTPException) as exc:
                status, error = None, repr(exc)
            self.outcomes.append(Outcome(sent, time.monotonic(), status, error))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.envoy
class TestPolicyEditUnderTraffic:
    def test_deny_takes_effect_within_a_second_without_errors(
        self, launcher: Launcher, upstream: Upstream
    ) -> None:
        """Rewriting a policy to deny /public flips 200 to 403 within 1 s; nothing fails.

        One process never answers the old decision after the new one. Workers each load
        the directory on their own (docs/operations.md, "Workers"), so with several an old
        decision may still come from a worker that has not reloaded, for at most one reload
        interval (and a load) after the first new one; never later.
        """
        stack = start_stack(launcher, upstream)
        xds_before = stack.xds_counters()
        with Traffic(stack.port, "/public") as traffic:
            assert wait_until(lambda: len(traffic.outcomes) >= 10, timeout=5)
            written = time.monotonic()
            stack.write(EDITABLE_FILE, deny_paths_yaml("/public"))
            wait_until(
                lambda: any(o.status == 403 for o in traffic.outcomes),
                timeout=CHANGE_DEADLINE + 2,
            )
            time.sleep(0.3)  # some traffic after the change
        outcomes = list(traffic.outcomes)
        failures = [o for o in outcomes if o.status not in (200, 403)]
        assert failures == [], f"{len(failures)} failed requests: {failures[:5]}"
        first_new = next((o for o in outcomes if o.status == 403), None)
        assert first_new is not None, "no request was denied after the policy change"
        assert first_new.answered - written <= CHANGE_DEADLINE, (
            f"first 403 answered {first_new.answered - written:.3f}s after the write"
        )
        assert all(o.status == 200 for o in outcomes if o.answered < written)
        skew = 0.0 if launcher.workers == 1 else WORKER_RELOAD_SKEW
        flipped_back = [
            o for o in outcomes if o.sent > first_new.answered + skew and o.status != 403
        ]
        assert flipped_back == [], f"old decision after the new one: {flipped_back[:5]}"
        # An authorization change is not an Envoy change: nothing was pushed or rebuilt.
        assert stack.xds_counters() == xds_before


# Invalid Gateways. Each case edits the valid Gateway's lines in place and returns the
# 1-based line the rejection must name, and a word its message must contain.
Edit = Callable[[list[str], GatewayStack], tuple[int, str]]


def _index(lines: list[str], text: str, after: str = "") -> int:
    start = lines.index(after) if after else 0
    return next(i for i in range(start, len(lines)) if lines[i] == text)


def endpoint_out_of_range(lines: list[str], stack: GatewayStack) -> tuple[int, str]:
    at = _index(
        lines,
        f'    backend: {{endpoints: ["127.0.0.1:{stack.upstream.port}"]}}',
        after="  - name: default",
    )
    lines[at] = '    backend: {endpoints: ["127.0.0.1:70000"]}'
    return at + 1, "1-65535"


def duplicate_listener_port(lines: list[str], stack: GatewayStack) -> tuple[int, str]:
    at = _index(lines, '    hosts: ["*"]')
    lines[at + 1 : at + 1] = ["  - name: second", f"    port: {stack.port}"]
    return at + 3, "already used"


def regex_envoy_cannot_compile(lines: list[str], stack: GatewayStack) -> tuple[int, str]:
    """Python's re accepts a lookahead; Envoy's RE2 does not."""
    at = _index(lines, "    match: {prefix: /product}")
    lines[at] = '    match: {regex: "^/product(?=/)"}'
    return at + 1, "regex"


def unknown_rate_limit_action(lines: list[str], stack: GatewayStack) -> tuple[int, str]:
    """A hand-written route rateLimits entry that is not an Envoy RateLimit."""
    at = _index(lines, "    timeout: 15s", after="  - name: products")
    lines.insert(at + 1, "    rateLimits: [{actions: [{no_such_action: {}}]}]")
    return at + 2, "rateLimits"


INVALID_GATEWAYS = [  # the one Envoy may NACK last: a NACK leaves the stack less clean
    endpoint_out_of_range,
    duplicate_listener_port,
    unknown_rate_limit_action,
    regex_envoy_cannot_compile,
]


@pytest.fixture(scope="class", name="reject_stack")
def fixture_reject_stack(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Upstream,
    envoy_binary: str,
    request: pytest.FixtureRequest,
) -> Iterator[GatewayStack]:
    workers = request.config.getoption("--serve-workers")
    launcher = Launcher(tmp_path_factory, "gateway-reject", workers=workers)
    try:
        yield start_stack(launcher, upstream)
    finally:
        launcher.close()


def _probe(stack: GatewayStack) -> list[int]:
    """A behaviour fingerprint: routing, authz and quota answers of a few requests."""
    return [
        stack.request("/healthz").status,
        stack.request("/public").status,
        stack.request("/api/orders").status,
        stack.request("/product/x", bearer("bob")).status,
    ]


def _valid_gateway(stack: GatewayStack) -> str:
    return gateway_yaml(stack.node, stack.port, stack.upstream.port)


@pytest.mark.envoy
class TestInvalidGatewayIsRejected:
    @pytest.mark.parametrize("edit", INVALID_GATEWAYS, ids=lambda edit: edit.__name__)
    def test_rejected_and_envoy_keeps_the_old_config(
        self, reject_stack: GatewayStack, edit: Edit
    ) -> None:
        """A bad Gateway is rejected (file:line in last_rejection) and never reaches Envoy."""
        stack = reject_stack
        lines = _valid_gateway(stack).splitlines()
        line, message = edit(lines, stack)
        bad = "\n".join(lines) + "\n"
        digest = stack.debug_config()["digest"]
        counters = stack.xds_counters()
        behaviour = _probe(stack)
        try:
            stack.write(GATEWAY_FILE, bad)
            rejected = wait_until(
                lambda: stack.debug_config()["last_rejection"] is not None, timeout=3
            )
            time.sleep(0.3)  # had anything been pushed, Envoy would have taken it by now
            debug = stack.debug_config()
            after = stack.xds_counters()
            behaviour_after = _probe(stack)
        finally:
            stack.write(GATEWAY_FILE, _valid_gateway(stack))
            restored = wait_until(lambda: _restored(stack, digest), timeout=5)
        problems = []
        if not rejected:
            problems.append(
                f"not rejected: the set was loaded (digest {digest} -> {debug['digest']}), "
                "last_rejection is null"
            )
        else:
            errors = debug["last_rejection"]["errors"]
            if not any(f"{GATEWAY_FILE}:{line}:" in e and message in e for e in errors):
                problems.append(f"expected {GATEWAY_FILE}:{line}: ...{message}..., got {errors}")
            if debug["digest"] != digest:
                problems.append(f"serving digest changed: {digest} -> {debug['digest']}")
        changed = {k: (counters.get(k), v) for k, v in after.items() if counters.get(k) != v}
        if changed:
            nacks = [
                t["last_nack"]
                for stream in debug["xds"]["streams"]
                for t in stream["types"].values()
                if t["last_nack"]
            ]
            problems.append(f"it reached Envoy: counters (before, after) {changed}; NACKs {nacks}")
        if behaviour_after != behaviour:
            problems.append(f"behaviour changed: {behaviour} -> {behaviour_after}")
        assert problems == [], "\n".join(problems)
        assert restored, "the valid Gateway, written back, was not served again"


def _restored(stack: GatewayStack, digest: str) -> bool:
    """The valid set is served again and every xDS type Envoy was sent is ACKed."""
    debug = stack.debug_config()
    if debug["last_rejection"] is not None or debug["digest"] != digest:
        return False
    return all(
        t["version_sent"] == t["version_acked"]
        for stream in debug["xds"]["streams"]
        for t in stream["types"].values()
    )


@pytest.mark.envoy
class TestXdsRestart:
    def test_envoy_keeps_serving_and_reconnects_without_churn(
        self, launcher: Launcher, upstream: Upstream
    ) -> None:
        """mixerless stopped and restarted on the same ports: Envoy serves on, rebuilds nothing."""
        # A short grace: a slow SIGTERM is the next test's subject, not this one's.
        stack = start_stack(launcher, upstream, mixerless_extra=("--shutdown-grace", "200ms"))
        assert _connected(stack) == 1
        versions = _all_versions(stack)
        problems = []
        for restart in range(1, RESTARTS + 1):
            counters = stack.xds_counters()
            stack.mixerless.stop()
            assert wait_until(lambda: _connected(stack) == 0, timeout=5)
            for _ in range(3):  # routing goes on; /healthz needs neither authz nor ratelimit
                assert stack.request("/healthz").status == 200
            restart_mixerless(stack)
            assert wait_until(lambda: _connected(stack) == 1, timeout=20), stack.describe()
            assert wait_until(lambda: _all_types_requested(stack), timeout=5), stack.describe()
            time.sleep(0.3)  # anything pushed would be applied by now
            problems += [f"restart {restart}: {p}" for p in _churn(stack, versions, counters)]
        assert problems == [], "churn after a restart:\n" + "\n".join(problems)
        assert stack.request("/healthz").status == 200
        assert stack.request("/api/orders", bearer("alice")).status == 200

    def test_sigterm_with_envoy_connected_stops_promptly(
        self, launcher: Launcher, upstream: Upstream
    ) -> None:
        """SIGTERM ends the ADS streams at once, not after the whole shutdown grace (10 s)."""
        stack = start_stack(launcher, upstream)
        assert _connected(stack) == 1
        started = time.monotonic()
        code = stack.mixerless.stop()
        took = time.monotonic() - started
        assert code == 0, stack.mixerless.describe()
        assert took < 3.0, f"SIGTERM took {took:.1f}s with one Envoy connected"


def _churn(
    stack: GatewayStack, versions: dict[str, dict[str, str]], counters: dict[str, int]
) -> list[str]:
    """What a reconnect changed: Envoy's versions and update counters, mixerless's pushes."""
    now = _all_versions(stack)
    found = [
        f"{kind} {name}: version_info {version} -> {now[kind].get(name)}"
        for kind, named in versions.items()
        for name, version in named.items()
        if now[kind].get(name) != version
    ]
    after = stack.xds_counters()
    found += [
        f"{name}: {counters[name]} -> {after[name]}"
        for name in sorted(counters)
        if name.endswith(("update_success", "update_rejected")) and after[name] != counters[name]
    ]
    pushes = {
        k: v for k, v in stack.metrics().items() if k.startswith("mixerless_xds_pushes_total")
    }
    if any(pushes.values()):
        found.append(f"mixerless pushed to an Envoy that was up to date: {pushes}")
    return found


def _connected(stack: GatewayStack) -> int:
    return stack.envoy.stats("control_plane.connected_state")["control_plane.connected_state"]


def _all_versions(stack: GatewayStack) -> dict[str, dict[str, str]]:
    """The version_info of every dynamic listener, cluster and route configuration."""
    dump = {entry["@type"].rsplit(".", 1)[-1]: entry for entry in stack.config_dump()["configs"]}
    listeners = dump["ListenersConfigDump"].get("dynamic_listeners", [])
    clusters = dump["ClustersConfigDump"].get("dynamic_active_clusters", [])
    routes = dump["RoutesConfigDump"].get("dynamic_route_configs", [])
    return {
        "listener": {e["name"]: e["active_state"]["version_info"] for e in listeners},
        "cluster": {e["cluster"]["name"]: e["version_info"] for e in clusters},
        "route": {e["route_config"]["name"]: e["version_info"] for e in routes},
    }


def _all_types_requested(stack: GatewayStack) -> bool:
    streams = stack.debug_config()["xds"]["streams"]
    return len(streams) == 1 and len(streams[0]["types"]) == 4
