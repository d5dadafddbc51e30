"""k6 through a real Envoy gateway (``loadtest/k6/gateway.js``): every answer is judged."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness.k6 import find_k6

from tests.loadtest.conftest import LOADTEST, LoadtestStack

pytestmark = pytest.mark.envoy
SCRIPT = LOADTEST / "k6" / "gateway.js"
CLASSES = ("api", "quota", "missing", "expired", "bad_signature", "admin", "staff")


def run_gateway_js(
    stack: LoadtestStack, tmp_path: Path, **env: str
) -> tuple[int, dict[str, Any], str]:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [find_k6(), "run", "--quiet", "--no-usage-report", str(SCRIPT)],
        env={
            **os.environ,
            "GATEWAY_URL": stack.gateway_url,
            "TOKENS": str(stack.tokens),
            "SUMMARY": str(summary),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    metrics = json.loads(summary.read_text())["metrics"]
    return done.returncode, metrics, done.stdout + done.stderr


def count(metrics: dict[str, Any], name: str) -> int:
    return int(metrics[name]["values"]["count"]) if name in metrics else 0


def test_closed_loop_judges_every_class_and_pushes_heavy_users_over_quota(
    loadtest_stack: LoadtestStack, tmp_path: Path
) -> None:
    """Closed loop: all seven request classes are sent and judged right, and 429s are among them."""
    code, metrics, output = run_gateway_js(loadtest_stack, tmp_path, VUS="4", DURATION="4s")
    assert code == 0, output
    assert count(metrics, "wrong_answers") == 0, output
    assert count(metrics, "http_reqs") > 100
    assert all(count(metrics, f"http_reqs{{class:{name}}}") > 0 for name in CLASSES), output
    assert count(metrics, "http_reqs{status:429}") > 0, output  # the heavy user went over 100/min


def test_open_loop_runs_at_the_offered_rate_and_judges_answers(
    loadtest_stack: LoadtestStack, tmp_path: Path
) -> None:
    """Open loop (constant-arrival-rate): about RATE x DURATION requests, none judged wrong."""
    code, metrics, output = run_gateway_js(
        loadtest_stack, tmp_path, RATE="40", DURATION="3s", MAX_VUS="10"
    )
    assert code == 0, output
    assert count(metrics, "wrong_answers") == 0, output
    assert 80 <= count(metrics, "http_reqs") <= 130, output


def test_a_gateway_answering_differently_is_reported_as_wrong(
    loadtest_stack: LoadtestStack, tmp_path: Path
) -> None:
    """Expecting 200 where the gateway rightly says 403 makes k6 count wrong answers and fail."""
    code, metrics, output = run_gateway_js(
        loadtest_stack, tmp_path, VUS="2", DURATION="2s", MIX="missing=1", EXPECT="missing=200"
    )
    assert code != 0
    assert count(metrics, "wrong_answers") == count(metrics, "http_reqs") > 0
    assert "wrong answer: missing GET /api/orders: expected 200, got 403" in output
