"""Honest numbers: answers checked before any load, and Envoy's own counters after it.

* ``preflight``: a valid token gets 200, a missing one 403, a bad signature 401, and a user
  over quota 429 (a stack without policies must answer 200 to all of them instead);
* ``coverage``: the filters' counters in Envoy (``ext_authz``, ``ratelimit``,
  ``jwt_authn``, ``rbac``, ``local_ratelimit``) must account for every request k6 sent, so a
  stack cannot look fast by skipping its policy work.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

from harness.k6 import K6Result
from harness.processes import http_get
from harness.stacks import RunningStack

QUOTA_PATH = "/product/1"
QUOTA_WINDOW_S = 60  # the demo quota's unit (policies/gateway/product-quota.yaml)
_COUNTER = re.compile(r"^(\S+): (\d+)$")


def envoy_counters(admin_url: str) -> dict[str, int]:
    """Every counter (and gauge) Envoy's admin ``/stats`` lists, by name."""
    with urllib.request.urlopen(f"{admin_url}/stats", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        match = _COUNTER.match(line)
        if match:
            found[match[1]] = int(match[2])
    return found


def preflight(stack: RunningStack, pool: dict[str, Any], quota_limit: int) -> dict[str, Any]:
    """Send the four reference requests; return what came back and what was wrong."""
    url = stack.gateway_url

    def status(path: str, token: str | None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return http_get(url + path, timeout=5, headers=headers)[0]

    enforced = stack.spec.enforces
    user = pool["users"][-1]["token"]  # the k6 runs use pools of their own
    seen = {
        "valid": status("/api/orders", user),
        "missing": status("/api/orders", None),
        "bad_signature": status("/api/orders", pool["bad_signature"][0]),
    }
    # A fresh user: within its quota first, then over it (Envoy's token bucket lets one
    # more through than the limit, so send two more). The mixerless quota is a fixed
    # window of a minute: a sequence that crossed into the next minute proves nothing, and
    # another fresh user tries again (the retry starts just after a boundary).
    if enforced:
        for fresh in (user, pool["users"][-2]["token"]):
            minute = time.time() // QUOTA_WINDOW_S
            quota = [status(QUOTA_PATH, fresh) for _ in range(quota_limit + 2)]
            if time.time() // QUOTA_WINDOW_S == minute:
                break
    else:
        quota = [status(QUOTA_PATH, user)]
    seen["quota_first"], seen["quota_last"] = quota[0], quota[-1]
    wanted = (
        {"valid": 200, "missing": 403, "bad_signature": 401, "quota_first": 200, "quota_last": 429}
        if enforced
        else dict.fromkeys(seen, 200)
    )
    wrong = [
        f"{name}: expected {wanted[name]}, got {got}"
        for name, got in seen.items()
        if got != wanted[name]
    ]
    return {"seen": seen, "wrong": wrong}


def _delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def _limiter_counter(name: str, outcomes: tuple[str, ...]) -> bool:
    return name.startswith("cluster.") and any(name.endswith(f".ratelimit.{o}") for o in outcomes)


def listener_prefix(counters: dict[str, int]) -> str:
    """The gateway's HTTP stat prefix: the busiest ``http.<prefix>.downstream_rq_total``
    but the admin and upstream (``backend``) listeners."""
    totals = {
        name.split(".")[1]: value
        for name, value in counters.items()
        if name.startswith("http.") and name.endswith(".downstream_rq_total")
    }
    totals.pop("admin", None)
    totals.pop("backend", None)
    return max(totals, key=lambda prefix: totals[prefix]) if totals else "gateway"


def coverage(
    stack: RunningStack,
    before: dict[str, int],
    after: dict[str, int],
    k6: K6Result,
    quota_hits: int | None = None,
) -> tuple[dict[str, int], list[str]]:
    """The filter counters over the run, and every way they fail to cover k6's requests;
    ``quota_hits``: the requests mixerless counted against a quota meanwhile (its own
    ``mixerless_ratelimit_hits_total``), which is what covers them when counted in Check."""
    prefix = listener_prefix(after)

    def d(name: str) -> int:
        return _delta(before, after, name)

    seen = {"downstream_rq_completed": d(f"http.{prefix}.downstream_rq_completed")}
    expected = {"downstream_rq_completed": k6.requests}
    problems: list[str] = []
    kind = stack.spec.kind
    if kind in ("noop", "mixerless"):
        authz = f"http.{prefix}.ext_authz"
        seen["ext_authz.ok+denied"] = d(f"{authz}.ok") + d(f"{authz}.denied")
        seen["ext_authz.error"] = d(f"{authz}.error") + d(f"{authz}.failure_mode_allowed")
        expected.update({"ext_authz.ok+denied": k6.requests, "ext_authz.error": 0})
    if kind == "mixerless":
        # Two hops: the ratelimit filter counts under the cluster each request was routed
        # to. One hop: Envoy asks no rate limit service; mixerless counts inside the Check.
        def limiter(*outcomes: str) -> int:
            return sum(d(name) for name in after if _limiter_counter(name, outcomes))

        seen["ratelimit.ok+over_limit"] = limiter("ok", "over_limit")
        seen["ratelimit.error"] = limiter("error", "failure_mode_allowed")
        expected["ratelimit.error"] = 0
        if seen["ratelimit.ok+over_limit"] or quota_hits is None:
            expected["ratelimit.ok+over_limit"] = k6.quota_judged
        else:
            seen["mixerless quota hits"] = quota_hits
            expected["mixerless quota hits"] = k6.quota_judged
    if kind == "in-proxy":
        jwt, rbac = f"http.{prefix}.jwt_authn", f"http.{prefix}.rbac"
        seen["jwt_authn.allowed+denied"] = d(f"{jwt}.allowed") + d(f"{jwt}.denied")
        seen["rbac.allowed+denied"] = d(f"{rbac}.allowed") + d(f"{rbac}.denied")
        seen["local_ratelimit.enabled"] = d("quota.http_local_rate_limit.enabled")
        expected.update(
            {
                "jwt_authn.allowed+denied": k6.requests,
                "rbac.allowed+denied": d(f"{jwt}.allowed"),
                "local_ratelimit.enabled": k6.quota_judged,
            }
        )
    # k6 counts a request it gave up on (timeout) that Envoy may still have finished.
    slack = max(2, k6.requests // 1000)
    for name, want in expected.items():
        if abs(seen[name] - want) > (0 if want == 0 else slack):
            source = "" if name.startswith("mixerless") else "Envoy "
            problems.append(f"{source}{name} = {seen[name]}, expected {want}")
    return seen, problems
