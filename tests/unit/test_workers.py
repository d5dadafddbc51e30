"""The worker port plan, the flags a worker is given, the restart backoff, the parent watch."""

import argparse
import asyncio
import os
import socket
from pathlib import Path

import pytest

from services.settings import Settings, add_arguments, build_settings
from services.worker_ports import (
    PortPlan,
    WorkerPorts,
    WorkerRole,
    check_free,
    check_port_free,
    default_workers,
    free_port_plan,
    plan_ports,
    worker_flags,
)
from services.workers import Backoff, probe_host, watch_parent
from services.xds.gateway import Endpoint


class TestPortPlan:
    def test_three_ports_per_worker_from_the_base(self) -> None:
        """Worker i: authz base+3i, ratelimit base+3i+1, http base+3i+2."""
        plan = plan_ports(3, 20000)
        assert plan.workers == (
            WorkerPorts(0, 20000, 20001, 20002),
            WorkerPorts(1, 20003, 20004, 20005),
            WorkerPorts(2, 20006, 20007, 20008),
        )
        assert plan.ports() == list(range(20000, 20009))

    def test_the_xds_services_list_every_worker(self) -> None:
        """Each worker's authz and ratelimit ports are endpoints of the generated clusters."""
        services = plan_ports(2, 20000).services("10.0.0.7")
        assert services.authz == (Endpoint("10.0.0.7", 20000), Endpoint("10.0.0.7", 20003))
        assert services.ratelimit == (Endpoint("10.0.0.7", 20001), Endpoint("10.0.0.7", 20004))

    @pytest.mark.parametrize(
        ("workers", "base", "reserved", "message"),
        [
            (0, 20000, (), "at least 1"),
            (2, 65531, (), "worker ports 65531-65536 .* within 1-65535"),
            (2, 0, (), "within 1-65535"),
            (4, 8075, (8080, 8081, 9001), "include 8080, 8081, used by another service"),
        ],
    )
    def test_impossible_plans_are_refused(
        self, workers: int, base: int, reserved: tuple[int, ...], message: str
    ) -> None:
        """Too few workers, ports past 65535, or a public port in the range: ValueError."""
        with pytest.raises(ValueError, match=message):
            plan_ports(workers, base, reserved=reserved)

    def test_free_ports_are_distinct(self) -> None:
        """The OS's free ports, none twice."""
        plan = free_port_plan(3)
        assert [w.index for w in plan.workers] == [0, 1, 2]
        assert len(set(plan.ports())) == 9 and all(p > 0 for p in plan.ports())

    def test_a_taken_port_is_named(self) -> None:
        """check_free names the worker, the service and the port something listens on."""
        plan = free_port_plan(2)
        check_free(plan, "127.0.0.1")
        taken = plan.workers[1].ratelimit
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", taken))
            listener.listen()
            with pytest.raises(OSError, match=f"worker 1 ratelimit port {taken} on 127.0.0.1"):
                check_free(plan, "127.0.0.1")

    def test_a_taken_public_port_is_named_even_when_shared(self) -> None:
        """check_port_free refuses a port a listener holds, SO_REUSEPORT or not (a worker
        would otherwise share it with that listener)."""
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            with pytest.raises(OSError, match=f"authz port {port} on 127.0.0.1 is taken"):
                check_port_free("127.0.0.1", port, "authz")
        check_port_free("127.0.0.1", port, "authz")  # closed: free again

    def test_a_plan_is_a_value(self) -> None:
        """Plans compare by their ports (a restart with the same flags plans the same)."""
        assert plan_ports(2, 30000) == PortPlan(
            (WorkerPorts(0, 30000, 30001, 30002), WorkerPorts(1, 30003, 30004, 30005))
        )


class TestWorkerFlags:
    def test_a_worker_is_told_its_index_ports_and_the_counter_socket(self) -> None:
        """The flags a worker gets, its own HTTP port as --http-port."""
        flags = worker_flags(WorkerPorts(2, 20006, 20007, 20008), Path("/run/m/counters.sock"))
        assert flags == [
            "--worker-index",
            "2",
            "--worker-authz-port",
            "20006",
            "--worker-ratelimit-port",
            "20007",
            "--http-port",
            "20008",
            "--lease-socket",
            "/run/m/counters.sock",
        ]

    def test_the_flags_are_settings_the_worker_reads_back(self) -> None:
        """Appended to a serve command line, the flags become the worker's role and ports."""
        flags = worker_flags(WorkerPorts(1, 20003, 20004, 20005), Path("/run/m/c.sock"))
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        settings = build_settings(parser.parse_args(["--http-port", "1", *flags]), environ={})
        assert settings.worker == WorkerRole(1, 20003, 20004, Path("/run/m/c.sock"))
        assert settings.worker.is_worker and settings.http_port == 20005
        assert not Settings().worker.is_worker

    def test_no_socket_without_parent_counters(self) -> None:
        """With Redis there is no counter socket to name."""
        assert "--lease-socket" not in worker_flags(WorkerPorts(0, 1, 2, 3), None)


class TestBackoff:
    def test_doubles_up_to_the_cap(self) -> None:
        """0.1 s, doubling with each exit in a row, never past the cap."""
        backoff = Backoff(first=0.1, cap=1.0)
        assert [backoff.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


class TestHelpers:
    def test_wildcard_hosts_are_probed_on_loopback(self) -> None:
        """A worker listening everywhere is asked on loopback; a named host as named."""
        assert probe_host("0.0.0.0") == "127.0.0.1"
        assert probe_host("::") == "::1"
        assert probe_host("10.1.2.3") == "10.1.2.3"

    def test_default_workers_are_the_usable_cpus(self) -> None:
        """One worker per CPU this process may run on."""
        assert default_workers() == len(os.sched_getaffinity(0))

    async def test_watch_parent_returns_when_that_process_exits(self) -> None:
        """The watch waits while the process lives and returns once it has exited."""
        sleeper = await asyncio.create_subprocess_exec("sleep", "60")
        watch = asyncio.create_task(watch_parent(sleeper.pid))
        try:
            done, _ = await asyncio.wait([watch], timeout=0.05)
            assert not done
            sleeper.kill()
            await sleeper.wait()
            async with asyncio.timeout(10):
                await watch
        finally:
            if sleeper.returncode is None:
                sleeper.kill()
                await sleeper.wait()

    async def test_watch_parent_of_a_process_gone_returns_at_once(self) -> None:
        """A parent that already exited: nothing to wait for."""
        gone = await asyncio.create_subprocess_exec("true")
        await gone.wait()
        async with asyncio.timeout(10):
            await watch_parent(gone.pid)
