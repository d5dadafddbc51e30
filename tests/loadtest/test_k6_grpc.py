"""The k6 gRPC scenario (loadtest/k6/grpc.js) run for a few seconds against a real stack.

These pin that the script's answers are judged (and that a wrong one fails the run), not
how fast the services are: the machine is shared, so no latency is asserted.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness.k6 import find_k6  # a missing k6 fails the test, as Envoy does

SCRIPT = Path(__file__).resolve().parents[2] / "loadtest" / "k6" / "grpc.js"
# Settings of the script that must not leak in from the caller's environment.
SCENARIO_ENV = (
    "AUTHZ_ADDR", "RLS_ADDR", "PROTO_PATHS", "MODE", "VUS", "DURATION", "RATE", "PRE_VUS",
    "MAX_VUS", "TOKENS", "OWNERS", "QUOTA_LIMIT", "QUOTA_WINDOW", "MIX", "HOST", "API_PATH",
    "NAMESPACE", "GATEWAY", "LABELS", "SUBJECT_KEY", "DOMAIN", "RL_POLICY", "TIMEOUT", "SLOW_MS",
    "SUMMARY",
)  # fmt: skip
CHECK_CLASSES = ("check_valid", "check_missing", "check_expired", "check_bad_signature")


def run_k6(
    stack: Any, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run grpc.js against the stack; returns the process and k6's summary metrics."""
    summary = tmp_path / "summary.json"
    environ = {k: v for k, v in os.environ.items() if k not in SCENARIO_ENV}
    environ |= {
        "AUTHZ_ADDR": stack.authz_address,
        "RLS_ADDR": stack.ratelimit_address,
        "TOKENS": str(stack.tokens),
        "SUMMARY": str(summary),
        "RATE": "50",
        "DURATION": "3s",
        "PRE_VUS": "2",
        "MAX_VUS": "10",
        "K6_NO_USAGE_REPORT": "true",
        **env,
    }
    command = [find_k6(), "run", "--quiet", "--address", "", str(SCRIPT)]
    done = subprocess.run(
        command, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    assert summary.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads(summary.read_text())["metrics"]
    return done, metrics


def count(metrics: dict[str, Any], name: str) -> int:
    return int(metrics[name]["values"]["count"]) if name in metrics else 0


@pytest.mark.envoy
def test_check_and_ratelimit_answers_are_judged_right(loadtest_stack: Any, tmp_path: Path) -> None:
    """A 3 s open-loop run judges Check (every class) and ShouldRateLimit answers, none wrong."""
    done, metrics = run_k6(loadtest_stack, tmp_path)

    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, output
    assert count(metrics, "wrong_answers") == 0, output
    for name in CHECK_CLASSES:
        assert count(metrics, f"judged{{class:{name}}}") > 0, name
    assert count(metrics, "judged{class:check_valid,code:OK}") > 0
    assert count(metrics, "judged{class:check_missing,code:PERMISSION_DENIED}") > 0
    assert count(metrics, "judged{class:ratelimit}") > 0
    assert count(metrics, "grpc_req_duration{rpc:Check}") > 0
    assert count(metrics, "grpc_req_duration{rpc:ShouldRateLimit}") > 0
    assert "every answer was right" in done.stdout


@pytest.mark.envoy
def test_a_wrong_answer_fails_the_run(loadtest_stack: Any, tmp_path: Path) -> None:
    """A Check answer the judge did not expect is counted wrong and makes k6 exit non-zero."""
    # No policy protects /public, so a missing token is allowed: not the PERMISSION_DENIED expected.
    done, metrics = run_k6(
        loadtest_stack, tmp_path, MODE="check", MIX="missing=1", API_PATH="/public",
        DURATION="2s", RATE="20",
    )  # fmt: skip

    assert done.returncode == 99, done.stdout[-3000:] + done.stderr[-3000:]  # thresholds failed
    judged = count(metrics, "judged{class:check_missing}")
    assert judged > 0
    assert count(metrics, "wrong_answers") == judged
    assert count(metrics, "judged{class:check_missing,code:OK}") == judged
    assert "expected PERMISSION_DENIED, got OK" in done.stderr
