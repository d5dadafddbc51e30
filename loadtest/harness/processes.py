"""Child processes (each stopped by its own pid), free ports, readiness waits, server logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from harness import LOADTEST_DIR

# ``mixerless serve`` from another source tree (``--server-tree``): its ``services`` first.
_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from services.cli import main; "
_BOOT += "sys.exit(main())"


class Processes:
    """Every process this driver started; each is stopped by its own pid on exit."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        cpus: frozenset[int] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with output to ``log``; pinned to ``cpus`` from its first instruction."""
        log.parent.mkdir(parents=True, exist_ok=True)
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the driver only; it stops the rest
                preexec_fn=pin,  # before exec, so every thread the child makes inherits it
                env=env,
            )
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)


class Server(NamedTuple):
    """A server a driver started: its process, gRPC target, ``/metrics`` URL and log."""

    proc: subprocess.Popen[bytes]
    target: str
    metrics_url: str | None
    log: Path


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` without a thread (a pidfd on the loop), so cancelling is immediate."""
    if proc.poll() is None:
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(pidfd, exited.set)
        try:
            await exited.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    return proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(
    url: str, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Status and body of a GET; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{tail}")
        try:
            status, body = http_get(url)
            if status == 200:
                return
            last = f"{status} {body.decode(errors='replace')[:300]}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


def wait_grpc_ready(target: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{tail}")
        with grpc.insecure_channel(target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                continue
    raise RuntimeError(f"{target} not accepting gRPC after {timeout:.0f}s")


def start_noop_server(
    procs: Processes,
    service: str,
    log: Path,
    flavour: str = "aio",
    cpus: frozenset[int] | None = None,
) -> Server:
    """``noop_server.py --service <service> --flavour <flavour>`` on a free port, once it
    accepts gRPC."""
    grpc_port = free_port()
    argv = [
        sys.executable,
        str(LOADTEST_DIR / "noop_server.py"),
        "--service",
        service,
        "--port",
        str(grpc_port),
        "--flavour",
        flavour,
    ]
    proc = procs.start("noop", argv, log, cpus=cpus)
    wait_grpc_ready(f"127.0.0.1:{grpc_port}", proc, log, timeout=30)
    return Server(proc, f"127.0.0.1:{grpc_port}", None, log)


def start_mixerless(
    procs: Processes,
    serve: Sequence[str],
    grpc_port: int,
    log: Path,
    server_tree: str | None = None,
    cpus: frozenset[int] | None = None,
) -> Server:
    """``mixerless serve <serve...> --http-port <free>`` on 127.0.0.1, once ``/readyz`` answers.

    ``serve`` names the gRPC port (``--ratelimit-port``/``--authz-port``) ``grpc_port``. With
    ``server_tree`` it runs that source tree's ``services`` instead of the installed one.

    One process unless the driver's environment says otherwise (``MIXERLESS_WORKERS``):
    ``serve`` defaults to a worker per CPU, which would make runs depend on the machine
    (an environment variable, so checkouts from before ``--workers`` ignore it)."""
    http_port = free_port()
    if server_tree:
        command = [sys.executable, "-c", _BOOT, server_tree]
    else:
        binary = shutil.which("mixerless", path=str(Path(sys.executable).parent))
        command = [binary or "mixerless"]
    argv = [*command, "serve", *serve, "--host", "127.0.0.1", "--http-port", str(http_port)]
    env = dict(os.environ)
    env.setdefault("MIXERLESS_WORKERS", "1")
    proc = procs.start("mixerless", argv, log, cpus=cpus, env=env)
    wait_ready(f"http://127.0.0.1:{http_port}/readyz", proc, log, timeout=30)
    return Server(proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/metrics", log)


def log_problems(log: Path, ignore: Iterable[str] = ("counting in memory",)) -> list[str]:
    """Error, warning and traceback lines of a server log, except those containing ``ignore``."""
    lines = log.read_text(errors="replace").splitlines()
    skip = tuple(ignore)
    bad = [
        line[:300]
        for line in lines
        if any(word in line.lower() for word in ("error", "warning", "traceback", "exception"))
        and not any(text in line for text in skip)
    ]
    if bad:
        print(f"  server log {log.name}: {len(bad)} problem line(s), first: {bad[0][:200]}")
    return bad[:20]


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so every ``finally`` runs and children are stopped."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
