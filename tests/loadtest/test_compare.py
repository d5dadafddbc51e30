"""``loadtest/compare.py``: the side-by-side command, end to end on two stacks, and its checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness.gateway_checks import coverage
from harness.k6 import K6Result
from harness.stacks import STACKS, RunningStack

from tests.loadtest.conftest import LOADTEST


@pytest.mark.envoy
def test_compare_runs_both_loops_checks_every_stack_and_draws_the_plots(tmp_path: Path) -> None:
    """A short run of envoy and mixerless: preflight answers, covered counters, JSON and plots."""
    results = tmp_path / "compare.jsonl"
    argv = [
        sys.executable,
        str(LOADTEST / "compare.py"),
        "--quick",
        "--stacks",
        "envoy,mixerless-memory",
    ]
    argv += ["--duration", "2", "--warmup", "0", "--rates", "50", "--open-duration", "2"]
    argv += [
        "--service-cpus",
        "any",
        "--load-cpus",
        "any",
        "--out",
        str(tmp_path),
        "--results",
        str(results),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    line = json.loads(results.read_text())
    runs = {(r["stack"], r["mode"]): r for r in line["runs"]}
    assert set(runs) == {(s, m) for s in ("envoy", "mixerless-memory") for m in ("closed", "open")}
    assert runs["mixerless-memory", "closed"]["preflight"] == {
        "valid": 200,
        "missing": 403,
        "bad_signature": 401,
        "quota_first": 200,
        "quota_last": 429,
    }
    for run in line["runs"]:
        assert run["k6"]["wrong"] == 0 and run["k6"]["judged"] > 0
        assert not [
            flag for flag in run["flags"] if flag.startswith(("Envoy", "mixerless", "preflight"))
        ], run["flags"]
    counted = runs["mixerless-memory", "closed"]["envoy_counters"]
    assert counted["ratelimit.ok+over_limit"] == 0  # one hop: the Check counts the quota
    assert counted["mixerless quota hits"] > 0
    assert all(
        (tmp_path / name).stat().st_size > 0 for name in ("throughput.png", "cpu-per-request.png")
    )
    assert (tmp_path / "open-loop-p99.png").exists()
    assert "| mixerless-memory |" in done.stdout


def _k6(requests: int, quota: int) -> K6Result:
    return K6Result(0, requests, 1.0, 1, 1, 1, 1, requests, 0, 0, 0, quota, 0.0, 1.0, "")


def _stack(name: str) -> RunningStack:
    return RunningStack(STACKS[name], "http://127.0.0.1:1", "http://127.0.0.1:2", {}, {})


def test_coverage_flags_a_mixerless_run_whose_rate_limiter_saw_fewer_requests() -> None:
    """Quota requests that never reached the rate limit service are named, not ignored."""
    before = {"http.public_http.downstream_rq_total": 0}
    after = {
        "http.public_http.downstream_rq_total": 100,
        "http.public_http.downstream_rq_completed": 100,
        "http.public_http.ext_authz.ok": 90,
        "http.public_http.ext_authz.denied": 10,
        "cluster.public/products.ratelimit.ok": 20,
        "cluster.public/products.ratelimit.over_limit": 5,
        "http.backend.downstream_rq_total": 500,  # the upstream listener is not the gateway
    }
    seen, problems = coverage(_stack("mixerless-memory"), before, after, _k6(100, 35))
    assert seen["ratelimit.ok+over_limit"] == 25
    assert problems == ["Envoy ratelimit.ok+over_limit = 25, expected 35"]


def test_coverage_takes_mixerless_own_quota_counts_when_envoy_asked_no_rate_limiter() -> None:
    """One hop: quota requests are covered by mixerless's hits, and a shortfall is named."""
    after = {
        "http.public_http.downstream_rq_total": 100,
        "http.public_http.downstream_rq_completed": 100,
        "http.public_http.ext_authz.ok": 90,
        "http.public_http.ext_authz.denied": 10,
    }
    _, problems = coverage(_stack("mixerless-memory"), {}, after, _k6(100, 35), quota_hits=35)
    assert problems == []
    _, problems = coverage(_stack("mixerless-memory"), {}, after, _k6(100, 35), quota_hits=30)
    assert problems == ["mixerless quota hits = 30, expected 35"]


def test_coverage_accepts_an_in_proxy_run_whose_filters_saw_every_request() -> None:
    """jwt_authn saw all requests, RBAC all it let through, local_ratelimit every quota request."""
    after = {
        "http.gateway.downstream_rq_total": 100,
        "http.gateway.downstream_rq_completed": 100,
        "http.gateway.jwt_authn.allowed": 90,
        "http.gateway.jwt_authn.denied": 10,
        "http.gateway.rbac.allowed": 80,
        "http.gateway.rbac.denied": 10,
        "quota.http_local_rate_limit.enabled": 30,
    }
    _, problems = coverage(_stack("in-proxy"), {}, after, _k6(100, 30))
    assert problems == []
