"""The locust scenario (loadtest/locustfile.py) run headless against a real gateway stack."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"
SCENARIO_ENV = ("MIX", "OWNERS", "API_PATH", "QUOTA_PATH", "ADMIN_PATH", "QUOTA_JUDGE")


def run_locust(
    stack: Any, tmp_path: Path, users: int, seconds: int, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the scenario headless with CSV output; returns the process and the judge's JSON."""
    environ = {k: v for k, v in os.environ.items() if k not in SCENARIO_ENV}
    judge = tmp_path / "judge.json"
    environ |= {
        "TOKENS": str(stack.tokens),
        "JUDGE_JSON": str(judge),
        "QUOTA_LIMIT": "100",
        "QUOTA_WINDOW": "60",
        **env,
    }
    command = [
        str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
        "-t", f"{seconds}s", "--host", stack.gateway_url, "--csv", str(tmp_path / "locust"),
        "--only-summary",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    assert judge.exists(), done.stderr[-3000:]
    return done, json.loads(judge.read_text())


@pytest.mark.envoy
def test_every_answer_is_judged_right(loadtest_stack: Any, tmp_path: Path) -> None:
    """A short open-loop run gets only right answers, in api, quota, missing and more classes."""
    done, judge = run_locust(loadtest_stack, tmp_path, users=5, seconds=4, RATE_PER_USER="8")

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert judge["judged"] > 0
    assert judge["wrong"] == 0, judge
    assert judge["right"] == judge["judged"]
    assert {"api", "quota", "missing"} <= judge["by_class"].keys()
    assert (tmp_path / "locust_stats.csv").exists()


@pytest.mark.envoy
def test_a_wrong_answer_fails_the_run(loadtest_stack: Any, tmp_path: Path) -> None:
    """An answer the judge did not expect is a locust failure and makes the exit status 1."""
    done, judge = run_locust(
        loadtest_stack, tmp_path, users=1, seconds=2, RATE_PER_USER="5", MIX="api=1",
        API_PATH="/admin",  # a user token there gets 403, not the 200 api expects
    )  # fmt: skip

    assert done.returncode == 1
    assert judge["judged"] > 0
    assert judge["wrong"] == judge["judged"] == judge["wrong_by_class"]["api"]
    assert "GET api: wrong: expected 200, got 403" in done.stderr  # locust's error report
