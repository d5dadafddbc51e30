"""A stand-in for a ``mixerless serve`` worker, for the supervisor's tests (stdlib only).

It takes the flags ``services.worker_ports.worker_flags`` gives a worker, serves ``/readyz``
and ``/metrics`` on its ``--http-port`` (127.0.0.1), writes what it was told to
``<--record>/worker-<index>-<pid>.json``, and on SIGTERM or SIGINT answers ``/readyz``
with 503, records the signal, waits ``--drain`` seconds and exits 0. Test knobs:

* ``--die-once DIR``: the first process of each index exits 3 once it listens (a
  marker file in DIR says it did), so the supervisor has a worker to restart;
* ``--die-always``: every process exits 4 once it listens;
* ``--ignore-term``: signals are recorded but never end the process (SIGKILL does);
* ``--not-ready INDEX``: that worker's ``/readyz`` answers 503.

It exits by itself when the process that started it exits (a pidfd on its parent), so
a test runner that dies leaves nothing behind.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker-index", type=int, required=True)
    parser.add_argument("--worker-authz-port", type=int, required=True)
    parser.add_argument("--worker-ratelimit-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--lease-socket")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--drain", type=float, default=0.0)
    parser.add_argument("--die-once", type=Path)
    parser.add_argument("--die-always", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--not-ready", type=int, action="append", default=[])
    return parser.parse_args()


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.draining = False
        self.signals: list[str] = []
        self.record = args.record / f"worker-{args.worker_index}-{os.getpid()}.json"

    def write_record(self) -> None:
        body = {
            "index": self.args.worker_index,
            "pid": os.getpid(),
            "ports": [
                self.args.worker_authz_port,
                self.args.worker_ratelimit_port,
                self.args.http_port,
            ],
            "lease_socket": self.args.lease_socket,
            "signals": self.signals,
        }
        temporary = self.record.with_suffix(".tmp")
        temporary.write_text(json.dumps(body))
        temporary.replace(self.record)

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        path = request.split(b" ", 2)[1].decode()
        status, body = 404, b"not found\n"
        if path == "/readyz":
            ready = not self.draining and self.args.worker_index not in self.args.not_ready
            status, body = (200, b"ok\n") if ready else (503, b"not ready\n")
        elif path == "/metrics":
            status = 200
            body = (
                "# HELP fake_calls_total Calls.\n# TYPE fake_calls_total counter\n"
                f"fake_calls_total {self.args.worker_index + 1}\n"
            ).encode()
        head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        writer.close()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            self.signals.append(sig.name)
            self.draining = True
            self.write_record()
            if not self.args.ignore_term:
                stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        parent = os.pidfd_open(os.getppid())
        loop.add_reader(parent, stop.set)
        server = await asyncio.start_server(self.answer, "127.0.0.1", self.args.http_port)
        self.write_record()
        marker = (
            self.args.die_once / f"died-{self.args.worker_index}" if self.args.die_once else None
        )
        if marker is not None and not marker.exists():
            marker.write_text(str(os.getpid()))
            return 3
        if self.args.die_always:
            return 4
        await stop.wait()
        await asyncio.sleep(self.args.drain)
        server.close()
        return 0


def main() -> int:
    return asyncio.run(Worker(_arguments()).run())


if __name__ == "__main__":
    sys.exit(main())
