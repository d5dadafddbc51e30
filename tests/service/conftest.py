"""A real ``Application`` on port 0, with a policy directory the test can rewrite."""

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from services import envoy_api as api
from services.grpc_server import ServerOptions
from services.ratelimit.service import RateLimitOptions
from services.ratelimit.store import CounterStore
from services.serve import Application
from services.settings import Settings
from tests.ratelimit_calls import POLICY, write_policy


class Running:
    """A started application and a channel to its rate limit port."""

    def __init__(self, app: Application, channel: grpc.aio.Channel, policies: Path) -> None:
        self.app = app
        self.channel = channel
        self.policies = policies
        self.stub = api.RateLimitServiceStub(channel)
        assert app.ratelimit is not None
        self.grpc_port = app.ratelimit.port
        self.http_url = f"http://127.0.0.1:{app.http.port}"


AppFactory = Callable[..., "AsyncIterator[Running]"]


@pytest.fixture(name="policies")
def fixture_policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    write_policy(directory, POLICY)
    return directory


@pytest.fixture(name="start_app")
async def fixture_start_app(
    policies: Path,
) -> AsyncIterator[Callable[..., object]]:
    started: list[tuple[Application, grpc.aio.Channel]] = []

    async def start(
        *, options: RateLimitOptions | None = None, store: CounterStore | None = None
    ) -> Running:
        settings = Settings(
            services=frozenset({"ratelimit"}),
            policies=policies,
            ratelimit_port=0,
            http_port=0,
            reload_interval=0.05,
            shutdown_grace=2.0,
            server=ServerOptions(host="127.0.0.1"),
        )
        if options is not None:
            settings = replace(settings, ratelimit=options)
        app = Application(settings, store=store)
        await app.start()
        assert app.ratelimit is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.ratelimit.port}")
        started.append((app, channel))
        return Running(app, channel, policies)

    yield start
    for app, channel in started:
        await channel.close()
        await app.stop()
