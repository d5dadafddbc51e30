"""A real authz-only ``Application`` per case, asked over a real gRPC channel.

Design (measured on this 2-core machine): starting an authz-only ``Application`` on port
0, loading a small policy directory and stopping it again costs about 8 ms, and the first
Check on a new channel about 2 ms. That is far below the 50 ms budget, so every case gets
its own server and policy directory: no state (JWT cache, JWKS cache, provider clients,
workload cache) leaks from one case to the next, and no case waits for a reload. A test
that wants to see a reload (``AuthzServer.load``) rewrites the directory and waits for the
watcher (polling every 50 ms) to publish the new digest.

The server's clock is a ``ManualClock`` at ``tests.jwt_issuer.NOW``, the instant the test
tokens are minted for, so JWT time checks are exact. A policy set the service rejects
fails the test at once with the loader's errors.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services import envoy_api as api
from services.clock import ManualClock
from services.grpc_server import ServerOptions
from services.serve import Application
from services.settings import Settings
from tests.conformance.harness import Case, Outcome, assert_outcome, check_request
from tests.jwt_issuer import NOW

LOAD_TIMEOUT = 5.0
POLICY_FILE = "policies.yaml"
MESH_FILE = "mesh.yaml"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` in one rename: the watcher never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class AuthzServer:
    """One running authz service, its policy directory, and a channel to it."""

    def __init__(self, app: Application, directory: Path, clock: ManualClock) -> None:
        assert app.authz is not None
        self.app = app
        self.directory = directory
        self.clock = clock
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.authz.port}")
        self.stub = api.AuthorizationStub(self.channel)

    @property
    def digest(self) -> str | None:
        current = self.app.state.current
        return current.digest if current is not None else None

    async def check(self, **request: Any) -> Any:
        """Send an Envoy-shaped ``CheckRequest`` (see ``check_request``); the raw answer."""
        return await self.stub.Check(check_request(**request), timeout=10)

    async def outcome(self, **request: Any) -> Outcome:
        return Outcome.of(await self.check(**request))

    async def verify(self, case: Case) -> Outcome:
        """Send the case's request and assert its expectations."""
        outcome = await self.outcome(**case.request)
        assert_outcome(case, outcome)
        return outcome

    async def load(self, policy_yaml: str, mesh: str | None = None) -> None:
        """Rewrite the policy directory and wait until the watcher serves the new digest."""
        state = self.app.state
        assert state.last_rejection is None, state.last_rejection
        before = self.digest
        _write_policies(self.directory, policy_yaml, mesh)
        await _wait_for_load(self.app, lambda: self.digest not in (None, before))

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop()


def _write_policies(directory: Path, policy_yaml: str, mesh: str | None) -> None:
    _write(directory / POLICY_FILE, policy_yaml)
    mesh_path = directory / MESH_FILE
    if mesh is not None:
        _write(mesh_path, mesh)
    elif mesh_path.exists():
        mesh_path.unlink()


async def _wait_for_load(app: Application, loaded: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOAD_TIMEOUT
    while not loaded():
        rejection = app.state.last_rejection
        if rejection is not None:
            pytest.fail("policy set rejected:\n  " + "\n  ".join(rejection.errors))
        if loop.time() > deadline:
            pytest.fail(f"policy set not loaded within {LOAD_TIMEOUT}s")
        await asyncio.sleep(0.002)


class Launcher:
    """Starts authz servers for one test and stops them when it ends."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._servers: list[AuthzServer] = []

    async def start(self, policy_yaml: str, mesh: str | None = None) -> AuthzServer:
        directory = self._tmp_path / f"policies-{len(self._servers)}"
        directory.mkdir()
        _write_policies(directory, policy_yaml, mesh)
        settings = Settings(
            services=frozenset({"authz"}),
            policies=directory,
            authz_port=0,
            http_port=0,
            reload_interval=0.05,
            shutdown_grace=0.0,
            server=ServerOptions(host="127.0.0.1"),
        )
        clock = ManualClock(NOW)
        app = Application(settings, clock=clock)
        await app.start()
        server = AuthzServer(app, directory, clock)
        self._servers.append(server)
        await _wait_for_load(app, lambda: app.state.current is not None)
        return server

    async def run(self, case: Case) -> Outcome:
        """Serve the case's policies and verify its one request."""
        server = await self.start(case.policy_yaml, case.mesh)
        return await server.verify(case)

    async def close(self) -> None:
        for server in self._servers:
            await server.close()


@pytest.fixture(name="authz")
async def fixture_authz(tmp_path: Path) -> AsyncIterator[Launcher]:
    """Start authz servers with ``await authz.start(yaml)`` or ``await authz.run(case)``."""
    launcher = Launcher(tmp_path)
    yield launcher
    await launcher.close()
