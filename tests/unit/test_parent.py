"""Whether ``mixerless serve`` runs workers, on which ports, and how a worker is started."""

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest

from services import __version__
from services.grpc_server import ServerOptions
from services.parent import Layout, plan_layout, python_command, worker_command
from services.settings import Settings, SettingsError
from services.worker_ports import WorkerRole, default_workers, plan_ports
from tests.envoy_proc import LOOPBACK, free_port, free_port_block


@pytest.fixture(name="settings")
def fixture_settings() -> Settings:
    """Two workers on loopback, every public port free, worker ports from a free block."""
    return Settings(
        server=ServerOptions(host=LOOPBACK),
        workers=2,
        worker_port_base=free_port_block(6),
        authz_port=free_port(),
        ratelimit_port=free_port(),
        xds_port=free_port(),
        http_port=free_port(),
    )


@pytest.fixture(name="listening")
def fixture_listening() -> Iterator[socket.socket]:
    """A socket listening on a loopback port: something else's server."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen()
        yield sock


class TestPlanLayout:
    def test_two_workers_share_the_public_ports_and_get_their_own(self, settings: Settings) -> None:
        """Workers from --worker-port-base, three ports each; the public ports as given."""
        layout = plan_layout(settings)
        assert layout == Layout(
            2,
            plan_ports(2, settings.worker_port_base),
            settings.authz_port,
            settings.ratelimit_port,
        )

    @pytest.mark.parametrize(
        "change",
        [
            {"workers": 1},  # today's single process, exactly
            {"worker": WorkerRole(index=0)},  # a worker never plans workers
            {"services": frozenset({"xds"})},  # nothing for workers to answer
        ],
        ids=["one-worker", "a-worker", "only-xds"],
    )
    def test_one_process_when_workers_have_nothing_to_do(
        self, settings: Settings, change: dict[str, object]
    ) -> None:
        """--workers 1, a worker itself, and --only xds run one process: no layout."""
        assert plan_layout(replace(settings, **change)) is None  # type: ignore[arg-type]

    def test_zero_workers_means_one_per_cpu(self, settings: Settings) -> None:
        """--workers 0 (the default) is the CPUs this process may run on."""
        layout = plan_layout(replace(settings, workers=0, worker_port_base=0))
        cpus = default_workers()
        assert (layout.workers if layout is not None else 1) == cpus

    def test_port_zero_is_one_free_port_for_every_worker(self, settings: Settings) -> None:
        """--authz-port 0 and --worker-port-base 0: free ports, resolved once, none twice."""
        layout = plan_layout(replace(settings, authz_port=0, worker_port_base=0))
        assert layout is not None
        assert layout.authz_port != 0 and layout.ratelimit_port == settings.ratelimit_port
        ports = [layout.authz_port, *layout.plan.ports()]
        assert len(set(ports)) == 7 and 0 not in ports

    def test_a_plan_over_a_public_port_is_a_settings_error(self, settings: Settings) -> None:
        """Worker ports that include the HTTP port: refused, naming --worker-port-base."""
        clash = replace(settings, worker_port_base=settings.http_port - 4)
        with pytest.raises(SettingsError, match=r"--worker-port-base.*include"):
            plan_layout(clash)

    def test_a_taken_worker_port_stops_start_up(
        self, settings: Settings, listening: socket.socket
    ) -> None:
        """Something listens on worker 1's HTTP port: OSError naming it."""
        port = listening.getsockname()[1]
        with pytest.raises(OSError, match=f"worker 1 http port {port} .* is taken"):
            plan_layout(replace(settings, worker_port_base=port - 5))

    def test_a_taken_public_port_stops_start_up_when_served(
        self, settings: Settings, listening: socket.socket
    ) -> None:
        """The authz port is taken: refused (workers would share it with its owner through
        SO_REUSEPORT), unless authz is not served."""
        taken = replace(settings, authz_port=listening.getsockname()[1])
        with pytest.raises(OSError, match=r"authz port .* is taken"):
            plan_layout(taken)
        assert plan_layout(replace(taken, services=frozenset({"ratelimit"}))) is not None


class TestWorkerCommand:
    def test_the_parents_arguments_then_what_every_worker_shares(self, settings: Settings) -> None:
        """argv as given, then --only without xds, the worker count and the public ports."""
        layout = plan_layout(settings)
        assert layout is not None
        argv = ["serve", "--policies", "p", "--workers", "0"]
        command = worker_command(argv, settings, layout)
        head = python_command()
        assert command[: len(head)] == head
        assert command[len(head) :] == [
            *argv,
            "--only",
            "authz,ratelimit",
            "--workers",
            "2",
            "--authz-port",
            str(settings.authz_port),
            "--ratelimit-port",
            str(settings.ratelimit_port),
        ]

    def test_the_python_command_runs_this_package(self) -> None:
        """A new interpreter started with python_command() runs this very mixerless."""
        done = subprocess.run(
            [*python_command(), "--version"], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == f"mixerless {__version__}"
