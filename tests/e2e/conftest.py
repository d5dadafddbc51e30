"""Fixtures for end-to-end tests through real Envoy and ``mixerless serve`` processes.

* ``envoy_binary`` (session): the Envoy path; a missing binary FAILS every test using it.
* ``upstream`` (session): the echo HTTP server Envoy routes to.
* ``module_launcher`` (module) and ``launcher`` (function): a ``Launcher`` that starts
  processes and policy directories under pytest's temporary directory and stops every
  process it started, newest first, when the scope ends. Its ``mixerless serve``
  processes run with ``--workers`` from pytest's ``--serve-workers`` (default 1), so the
  whole tier runs against one process, or against a parent and its workers.
"""

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.envoy_proc import (
    EnvoyProcess,
    MixerlessProcess,
    Upstream,
    find_envoy,
    start_envoy,
    start_mixerless,
    start_upstream,
    write_file_atomically,
)


class Launcher:
    """Starts processes for one fixture scope and stops them all in ``close()``."""

    def __init__(
        self, tmp_path_factory: pytest.TempPathFactory, name: str, *, workers: int = 1
    ) -> None:
        self._tmp = tmp_path_factory
        self._name = re.sub(r"[^\w.-]", "_", name)[:40]
        self._started: list[EnvoyProcess | MixerlessProcess] = []
        self.workers = workers

    def _dir(self, kind: str) -> Path:
        return self._tmp.mktemp(f"{self._name}-{kind}")

    def policy_dir(self, files: Mapping[str, str]) -> Path:
        """A new directory holding ``files`` (relative name -> text)."""
        directory = self._dir("policies")
        for name, text in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomically(path, text)
        return directory

    def mixerless(
        self, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> MixerlessProcess:
        """``start_mixerless(args, env)`` (``--workers``: this launcher's, unless
        ``args`` say), stopped at the end of the scope."""
        process = start_mixerless(
            args, env, workdir=self._dir("mixerless"), workers=self.workers, timeout=30.0
        )
        self._started.append(process)
        return process

    def envoy(self, config_yaml: str, *, admin_port: int) -> EnvoyProcess:
        """``start_envoy(config_yaml, admin_port=...)``, stopped at the end of the scope."""
        process = start_envoy(config_yaml, admin_port=admin_port, workdir=self._dir("envoy"))
        self._started.append(process)
        return process

    def close(self) -> None:
        """Stop every process started here, newest first (Envoy before its backends)."""
        while self._started:
            self._started.pop().stop()


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    """The Envoy binary; raises (so the test errors, never skips) when it is missing."""
    return find_envoy()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    """An echo HTTP upstream on a free loopback port, shared by the whole session."""
    with start_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def module_launcher(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, envoy_binary: str
) -> Iterator[Launcher]:
    """A ``Launcher`` whose processes live until the end of the test module."""
    launcher = Launcher(
        tmp_path_factory,
        request.module.__name__.rsplit(".", 1)[-1],
        workers=request.config.getoption("--serve-workers"),
    )
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def launcher(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, envoy_binary: str
) -> Iterator[Launcher]:
    """A ``Launcher`` whose processes live until the end of the test."""
    launcher = Launcher(
        tmp_path_factory, request.node.name, workers=request.config.getoption("--serve-workers")
    )
    try:
        yield launcher
    finally:
        launcher.close()
