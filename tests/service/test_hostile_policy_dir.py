"""A served policy directory with hostile files in it: `mixerless serve` keeps serving,
reports each rejection, loads the next valid change, and exits 0 on SIGTERM."""

import os
import time
from pathlib import Path
from typing import Any

from tests.envoy_proc import MixerlessProcess, start_mixerless
from tests.ratelimit_calls import POLICY, write_policy

GOOD_2 = POLICY.replace("requests_per_unit: 1000", "requests_per_unit: 2000")


def wait_config(server: MixerlessProcess, done: Any, what: str, timeout: float = 10.0) -> Any:
    """/debug/config once ``done(config)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        config = server.get("/debug/config").json()
        if done(config):
            return config
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s; last: {config}")
        time.sleep(0.05)


def test_hostile_files_are_rejections_and_serving_goes_on(tmp_path: Path) -> None:
    """A FIFO, a /dev/zero symlink and a 5,000-digit integer are each rejected naming the
    file, /readyz stays 200, the next valid change loads, and SIGTERM exits 0."""
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies, POLICY)
    server = start_mixerless(
        ["--policies", str(policies), "--only", "ratelimit", "--reload-interval", "50ms"],
        workdir=tmp_path,
    )
    try:
        first = server.get("/debug/config").json()["digest"]
        hostile = {
            "fifo.yaml": lambda path: os.mkfifo(path),
            "zero.yaml": lambda path: os.symlink("/dev/zero", path),
            "int.yaml": lambda path: path.write_text("a: " + "9" * 5000 + "\n"),
        }
        for name, make in hostile.items():
            make(policies / name)
            config = wait_config(
                server,
                lambda c, name=name: (
                    c["last_rejection"] is not None
                    and any(name in error for error in c["last_rejection"]["errors"])
                ),
                f"a rejection naming {name}",
            )
            assert config["digest"] == first
            assert server.get("/readyz").status == 200
            (policies / name).unlink()
        write_policy(policies, GOOD_2)
        config = wait_config(
            server, lambda c: c["digest"] != first, "the next valid change loaded", timeout=5.0
        )
        assert config["last_rejection"] is None
        assert any("requests_per_unit=2000" in line for line in config["ratelimit"])
    finally:
        code = server.stop()
    assert code == 0
    log = (tmp_path / "mixerless.log").read_text()
    assert "Traceback" not in log
