"""The worker supervisor with real processes: ``tests/fake_worker.py`` on 127.0.0.1.

Each test starts its workers on free ports, and stops them through the supervisor;
the fixture then SIGKILLs, by PID, any fake worker a record names that still runs.
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from services.metrics_merge import merge_expositions
from services.worker_ports import free_port_plan
from services.workers import Backoff, Supervisor

FAKE_WORKER = Path(__file__).parent.parent / "fake_worker.py"
QUICK = Backoff(first=0.01, cap=0.05)  # restarts in these tests wait this long, no longer
SOON = 30.0  # seconds a busy machine may need to start Python processes: a bound, not a wait

Start = Callable[..., Awaitable[Supervisor]]


def records(directory: Path) -> list[dict[str, Any]]:
    """What every fake worker process wrote about itself, by index then pid."""
    found = [json.loads(p.read_text()) for p in directory.glob("worker-*.json")]
    return sorted(found, key=lambda r: (r["index"], r["pid"]))


def _is_fake_worker(pid: int) -> bool:
    try:
        return str(FAKE_WORKER) in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


@pytest.fixture(name="start")
async def fixture_start(tmp_path: Path) -> AsyncIterator[Start]:
    started: list[Supervisor] = []

    async def start(*knobs: str, workers: int = 2, backoff: Backoff = QUICK) -> Supervisor:
        argv = [sys.executable, str(FAKE_WORKER), "--record", str(tmp_path), *knobs]
        supervisor = Supervisor(
            argv, free_port_plan(workers), lease_socket=tmp_path / "c.sock", backoff=backoff
        )
        started.append(supervisor)
        await supervisor.start()
        return supervisor

    yield start
    for supervisor in started:
        await supervisor.stop(0)
    for record in records(tmp_path):
        if _is_fake_worker(record["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)


async def ready(supervisor: Supervisor) -> None:
    async with asyncio.timeout(SOON):
        await supervisor.wait_ready()


async def test_workers_start_ready_and_drain_on_sigterm(start: Start, tmp_path: Path) -> None:
    """Each worker is told its index, ports and the counter socket; readiness is all of
    them answering /readyz; stop sends SIGTERM and each drains and exits 0."""
    supervisor = await start("--drain", "0.2", workers=3)
    await ready(supervisor)
    assert await supervisor.readiness() == {0: "ok", 1: "ok", 2: "ok"}
    pids = supervisor.pids
    assert sorted(pids) == [0, 1, 2] and len(set(pids.values())) == 3
    told = records(tmp_path)
    assert [r["index"] for r in told] == [0, 1, 2]
    assert [r["pid"] for r in told] == [pids[0], pids[1], pids[2]]
    assert all(r["lease_socket"] == str(tmp_path / "c.sock") for r in told)
    assert len({port for r in told for port in r["ports"]}) == 9
    await supervisor.stop(SOON)
    assert supervisor.pids == {}
    assert supervisor.exit_codes == {0: 0, 1: 0, 2: 0}  # drained, not killed
    assert [r["signals"] for r in records(tmp_path)] == [["SIGTERM"]] * 3
    assert await supervisor.readiness() == {0: "not running", 1: "not running", 2: "not running"}


async def test_sigint_is_forwarded_as_sigint(start: Start, tmp_path: Path) -> None:
    """stop(sig=SIGINT) passes the parent's Ctrl-C on as it came."""
    supervisor = await start(workers=1)
    await ready(supervisor)
    await supervisor.stop(SOON, signal.SIGINT)
    assert [r["signals"] for r in records(tmp_path)] == [["SIGINT"]]


async def test_readiness_needs_every_worker(start: Start) -> None:
    """One worker not ready: the supervisor is not ready, and says which and why."""
    supervisor = await start("--not-ready", "1")
    expected = {0: "ok", 1: "/readyz answered 503"}
    async with asyncio.timeout(SOON):
        # Until both listen (readiness is asked, not announced: there is no event).
        while await supervisor.readiness() != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert not await supervisor.ready()


async def test_a_worker_that_dies_is_started_again(start: Start, tmp_path: Path) -> None:
    """Each worker's first process exits 3; each is started again, with one warning."""
    with capture_logs() as entries:
        supervisor = await start("--die-once", str(tmp_path))
        async with asyncio.timeout(SOON):
            await supervisor.wait_until(lambda: supervisor.restarts == {0: 1, 1: 1})
        await ready(supervisor)
    exits = [e for e in entries if e["event"] == "worker exited; starting it again"]
    assert sorted((e["worker"], e["exit_code"]) for e in exits) == [(0, 3), (1, 3)]
    died = {i: int((tmp_path / f"died-{i}").read_text()) for i in (0, 1)}
    assert all(supervisor.pids[i] != died[i] for i in (0, 1))
    assert len(records(tmp_path)) == 4  # two processes per worker


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        (Backoff(first=0.01, cap=0.04), [0.01, 0.02, 0.04, 0.04]),  # doubling, capped
        (Backoff(first=0.01, cap=0.04, stable=0.0), [0.01] * 4),  # each run long enough
    ],
)
async def test_restarts_back_off_until_a_worker_stays_up(
    start: Start, backoff: Backoff, delays: list[float]
) -> None:
    """A worker that keeps exiting waits twice as long each time, up to the cap; one that
    ran ``stable`` seconds waits the first delay again."""
    with capture_logs() as entries:
        supervisor = await start("--die-always", workers=1, backoff=backoff)
        async with asyncio.timeout(SOON):
            await supervisor.wait_until(lambda: supervisor.restarts[0] >= 4)
        await supervisor.stop(SOON)
    exits = [e for e in entries if e["event"] == "worker exited; starting it again"]
    assert [e["restart_in"] for e in exits][:4] == delays
    assert {e["exit_code"] for e in exits} == {4}


async def test_a_worker_that_will_not_drain_is_killed_after_the_grace(
    start: Start, tmp_path: Path
) -> None:
    """SIGTERM first; a worker still running when the grace ends gets SIGKILL."""
    supervisor = await start("--ignore-term", workers=1)
    await ready(supervisor)
    await supervisor.stop(0.1)
    assert supervisor.exit_codes == {0: -signal.SIGKILL}
    assert [r["signals"] for r in records(tmp_path)] == [["SIGTERM"]]


async def test_metrics_are_scraped_from_every_worker(start: Start) -> None:
    """scrape returns each worker's /metrics; merged, their counters add up."""
    supervisor = await start(workers=2)
    await ready(supervisor)
    bodies = await supervisor.scrape()
    assert len(bodies) == 2
    [family] = text_string_to_metric_families(merge_expositions(bodies).decode())
    assert [s.value for s in family.samples] == [1 + 2]


async def test_a_command_that_cannot_start_fails_start(tmp_path: Path) -> None:
    """A worker command that does not exist: start raises, and nothing is left running."""
    supervisor = Supervisor([str(tmp_path / "no-such-program")], free_port_plan(2))
    with pytest.raises(FileNotFoundError):
        await supervisor.start()
    assert supervisor.pids == {}
