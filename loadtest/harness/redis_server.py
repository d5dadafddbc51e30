"""A private ``redis-server`` on a free port (never 6379), for a driver's ``--store redis``."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from harness.processes import Processes, free_port


class RedisServer:
    """``redis-server --save "" --appendonly no`` started by ``start``; stopped with ``procs``."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.url: str | None = None

    def start(self, procs: Processes, log: Path, cpus: frozenset[int] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        proc = procs.start("redis", argv, log, cpus=cpus)
        self.pid, self.url = proc.pid, f"redis://127.0.0.1:{port}"
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def flush(self) -> None:
        """``FLUSHALL`` (nothing when not started)."""
        if self.url is None:
            return
        import redis

        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()

    def command_calls(self) -> Counter[str]:
        """Calls per command (``INFO commandstats``), to see batching; empty when not started."""
        found: Counter[str] = Counter()
        if self.url is None:
            return found
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            for name, stats in client.info("commandstats").items():
                found[name.removeprefix("cmdstat_")] = int(stats["calls"])
        finally:
            client.close()
        return found
