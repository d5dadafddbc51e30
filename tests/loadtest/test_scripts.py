"""Every load-test script under loadtest/ starts: it imports and prints its --help."""

import subprocess
import sys
from pathlib import Path

import pytest

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
SCRIPTS = sorted(
    path.name
    for path in LOADTEST.glob("*.py")
    if "__main__" in path.read_text() and path.name != "locustfile.py"
)


def test_the_scripts_are_found() -> None:
    """The list below is not empty (the glob still finds the scripts)."""
    assert {"check_load.py", "rls_load.py", "compare.py", "policy_load.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_prints_its_help(script: str) -> None:
    """``<script> --help`` exits 0: a script that fails at import is caught here, not in a
    benchmark run."""
    done = subprocess.run(
        [sys.executable, str(LOADTEST / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout
