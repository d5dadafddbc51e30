"""Real redis-server processes for tests: one server, a 3-master Cluster, a Sentinel.

Each server runs on a free 127.0.0.1 port, in its own temporary directory, with
persistence off (``--save "" --appendonly no``), and is ready when ``start_*``
returns. A server that does not come up in time raises ``RuntimeError`` with its
log. A missing ``redis-server`` also raises ``RuntimeError``: tests that need
Redis fail, they are never skipped. Servers still running when the interpreter
exits are stopped.
"""

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redis.cluster

from tests import envoy_proc

READY_TIMEOUT = 15.0
_running: set["RedisServer"] = set()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed; the Redis tests need it on PATH "
            "(Debian/Ubuntu: apt-get install redis-server)"
        )
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, with_bus_port: bool = False) -> int:
    """A port nobody listens on; with ``with_bus_port``, port + 10000 is free too."""
    for _ in range(100):
        port = envoy_proc.free_port()
        if not with_bus_port or (port + 10000 <= 65535 and _port_is_free(port + 10000)):
            return port
    raise RuntimeError("found no free port pair for a Redis Cluster node")


def _wait_until(ready: Callable[[], bool], what: str, log: Path, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not alive():
            break
        with contextlib.suppress(redis.RedisError, OSError):
            if ready():
                return
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log.exists() else "(no log written)"
    state = "exited" if not alive() else f"not ready after {READY_TIMEOUT:g}s"
    raise RuntimeError(f"{what} {state}; its log:\n{text[-4000:]}")


class RedisServer:
    """One redis-server process (also used for Sentinel and Cluster nodes)."""

    def __init__(self, args: list[str], port: int, directory: Path, *, password: str | None):
        self.port = port
        self.directory = directory
        self.password = password
        self.log = directory / "redis.log"
        self.socket_path = directory / "redis.sock"
        self._process = subprocess.Popen(
            args, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        _running.add(self)

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:port``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def client(self) -> "redis.Redis":
        """A synchronous client, for checks and set-up outside the store under test."""
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def running(self) -> bool:
        return self._process.poll() is None

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections hang, nothing answers."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause`` (SIGCONT)."""
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the process (it may be paused) and delete its directory."""
        if self.running():
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        _running.discard(self)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait_ready(self, what: str) -> None:
        def pong() -> bool:
            with self.client() as client:
                return bool(client.ping())

        _wait_until(pong, what, self.log, self.running)


def _server_args(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        _binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--logfile", str(directory / "redis.log"),
        *extra,
    ]  # fmt: skip


def start_redis(*, password: str | None = None, unix_socket: bool = False) -> RedisServer:
    """A ready redis-server; ``password`` sets ``requirepass``, ``unix_socket`` also listens
    on ``server.socket_path``."""
    _binary("redis-server")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="mixerless-redis-"))
    extra: list[str] = []
    if password:
        extra += ["--requirepass", password]
    if unix_socket:
        extra += ["--unixsocket", str(directory / "redis.sock"), "--unixsocketperm", "700"]
    server = RedisServer(_server_args(port, directory, *extra), port, directory, password=password)
    server._wait_ready(f"redis-server on port {port}")
    return server


class RedisCluster:
    """Cluster nodes, every one a master holding a share of the 16384 slots."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self) -> "redis.cluster.RedisCluster":
        """A synchronous cluster client, for checks outside the store under test."""
        return redis.cluster.RedisCluster(
            host="127.0.0.1",
            port=self.nodes[0].port,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(nodes: int = 3) -> RedisCluster:
    """A ready Redis Cluster of ``nodes`` masters (no replicas), made by ``redis-cli``."""
    _binary("redis-server")
    _binary("redis-cli")
    servers: list[RedisServer] = []
    try:
        for _ in range(nodes):
            port = free_port(with_bus_port=True)
            directory = Path(tempfile.mkdtemp(prefix="mixerless-cluster-"))
            args = _server_args(
                port, directory,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            servers.append(RedisServer(args, port, directory, password=None))
        for server in servers:
            server._wait_ready(f"cluster node on port {server.port}")
        created = subprocess.run(
            [_binary("redis-cli"), "--cluster", "create"]
            + [f"127.0.0.1:{s.port}" for s in servers]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        for server in servers:

            def cluster_ok(server: RedisServer = server) -> bool:
                with server.client() as client:
                    info = client.cluster("INFO")
                return bool(
                    info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == nodes
                )

            _wait_until(cluster_ok, f"cluster node {server.port}", server.log, server.running)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return RedisCluster(servers)


class SentinelServer:
    """A redis-server in Sentinel mode, monitoring one master."""

    def __init__(self, server: RedisServer, master: RedisServer, name: str) -> None:
        self.server = server
        self.master = master
        self.name = name

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:port/name``."""
        auth = f":{self.master.password}@" if self.master.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.port}/{self.name}"

    def flush(self) -> None:
        self.master.flush()

    def stop(self) -> None:
        """Stop the Sentinel (not the master)."""
        self.server.stop()


def start_sentinel(master: RedisServer, name: str = "mymaster") -> SentinelServer:
    """A ready Sentinel that names ``master`` as ``name``."""
    _binary("redis-server")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="mixerless-sentinel-"))
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {directory}",
        f"logfile {directory / 'redis.log'}",
        f"sentinel monitor {name} 127.0.0.1 {master.port} 1",
        f"sentinel down-after-milliseconds {name} 5000",
    ]
    if master.password:
        lines.append(f"sentinel auth-pass {name} {master.password}")
    config = directory / "sentinel.conf"
    config.write_text("\n".join(lines) + "\n")
    args = [_binary("redis-server"), str(config), "--sentinel"]
    server = RedisServer(args, port, directory, password=None)

    def names_master() -> bool:
        with server.client() as client:
            address = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", name)
        return bool(address) and int(address[1]) == master.port

    try:
        _wait_until(names_master, f"sentinel on port {port}", server.log, server.running)
    except BaseException:
        server.stop()
        raise
    return SentinelServer(server, master, name)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(OSError):
            server.stop()
