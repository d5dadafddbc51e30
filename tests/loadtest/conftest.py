"""Fixtures for running the load-test scenarios briefly against a real stack.

``loadtest_stack`` is the stack ``make run`` serves (``mixerless serve`` with the demo
policies, Envoy configured over xDS), started once per session on free loopback ports by the
same code ``loadtest/compare.py`` uses, with a freshly minted token pool for every test (so
no two tests share a user's quota counters).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
sys.path.insert(0, str(LOADTEST))  # the scenarios' harness package lives beside them

from harness.processes import Processes  # noqa: E402
from harness.stacks import STACKS, Pinning, RunningStack, start_stack  # noqa: E402
from harness.tokens import PoolSpec, mint_pool, write_pool  # noqa: E402


@dataclass(frozen=True)
class LoadtestStack:
    gateway_url: str
    tokens: Path
    authz_address: str
    ratelimit_address: str
    envoy_admin_url: str


@pytest.fixture(scope="session")
def running_demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The demo policies behind a real Envoy, unpinned, for the whole session."""
    procs = Processes()
    unpinned = Pinning(service=None, envoy=None, load=None, redis=None, envoy_concurrency=1)
    try:
        yield start_stack(
            STACKS["mixerless-memory"], procs, tmp_path_factory.mktemp("stack"), unpinned
        )
    finally:
        procs.stop_all()


@pytest.fixture
def loadtest_stack(running_demo_stack: RunningStack, tmp_path: Path) -> LoadtestStack:
    """The session's stack with a token pool of this test's own."""
    stack = running_demo_stack
    assert stack.authz_address and stack.ratelimit_address
    pool = write_pool(mint_pool(PoolSpec(users=200)), tmp_path / "tokens.json")
    return LoadtestStack(
        stack.gateway_url, pool, stack.authz_address, stack.ratelimit_address, stack.admin_url
    )
