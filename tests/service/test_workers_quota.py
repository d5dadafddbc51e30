"""N workers without Redis never admit more than one process would: the parent's counters.

``mixerless serve --workers 3 --only ratelimit`` as a real process tree on 127.0.0.1.
One user's quota of ``LIMIT`` an hour is hammered with twice as many calls, from many
connections at once, through the public port (which the kernel spreads over the
workers) and through every worker's own port. The bound is the one
``docs/architecture.md`` derives ("Leased quota: the bound"): an exact limit is counted
by the parent, one call at a time, so exactly ``LIMIT`` pass; a leased one never passes
more than ``LIMIT``, and fewer by at most what the workers still hold
(``H <= LIMIT / k + P``), which calls that go on spend or idle workers give back.
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests.envoy_proc import MixerlessProcess, start_mixerless, wait_for_fresh_window
from tests.quota_load import hammer
from tests.ratelimit_calls import make_request, write_policy

WORKERS = 3
LIMIT = 300
SAFETY = 2  # LeasePolicy.safety, the k of the bound
STRANDED = LIMIT // SAFETY + WORKERS  # the most the workers may still hold at the end
SETTLE = 30.0  # seconds the leftover units may take to be spent or given back: a bound

POLICY = f"""\
domain: quota
descriptors:
  - key: exact
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
  - key: leased
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, counting: leased}}
"""


@pytest.fixture(scope="module", name="tree")
def fixture_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixerlessProcess]:
    policies = tmp_path_factory.mktemp("quota-policies")
    write_policy(policies, POLICY)
    args = ["--policies", str(policies), "--only", "ratelimit", "--reload-interval", "100ms"]
    workdir: Path = tmp_path_factory.mktemp("quota-mixerless")
    process = start_mixerless(args, workdir=workdir, workers=WORKERS, timeout=60)
    try:
        yield process
    finally:
        process.stop()


async def test_an_exact_limit_admits_exactly_the_limit(tree: MixerlessProcess) -> None:
    """Twice the quota from 32 connections over every port: exactly LIMIT pass, and every
    worker admitted some (the parent counts one call at a time, for all of them)."""
    wait_for_fresh_window(3600, at_least=60)
    request = make_request("quota", [("exact", uuid4().hex)])
    tally = await hammer(tree.ratelimit_ports(), request, 2 * LIMIT)
    assert tally.failed == []
    assert (tally.total_admitted, tally.total_refused) == (LIMIT, LIMIT)
    own = tree.ratelimit_ports()[1:]
    assert all(tally.admitted[port] > 0 for port in own), tally.admitted


async def test_a_leased_limit_never_admits_more_than_the_limit(tree: MixerlessProcess) -> None:
    """Twice the quota, leased from the parent: at most LIMIT pass and at least LIMIT
    less what the workers may hold; further calls then take exactly the rest, never more."""
    wait_for_fresh_window(3600, at_least=60)
    request = make_request("quota", [("leased", uuid4().hex)])
    tally = await hammer(tree.ratelimit_ports(), request, 2 * LIMIT)
    assert tally.failed == []
    admitted = tally.total_admitted
    assert LIMIT - STRANDED <= admitted <= LIMIT
    # What the workers still held is spent by later calls, or given back when idle.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while admitted < LIMIT and loop.time() < deadline:
        more = await hammer(tree.ratelimit_ports(), request, 4 * WORKERS, channels_per_port=1)
        assert more.failed == []
        admitted += more.total_admitted
        assert admitted <= LIMIT
        await asyncio.sleep(0.2)
    assert admitted == LIMIT
