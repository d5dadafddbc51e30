"""The ``mixerless`` command: ``serve`` the services, ``check`` a policy directory offline."""

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from services import __version__
from services.authz.explain import add_arguments as explain_arguments
from services.catalog.loader import load_directory
from services.policy.errors import PolicyLoadError
from services.settings import (
    CHECK_OPTIONS,
    GATEWAY_OPTIONS,
    SettingsError,
    add_arguments,
    build_load_options,
    build_settings,
    resolve,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixerless",
        description="An open policy layer for Envoy gateways.",
    )
    parser.add_argument("--version", action="version", version=f"mixerless {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the services (flags override MIXERLESS_* environment variables)",
        description="Run every enabled service in one process, each on its own port.",
    )
    add_arguments(serve)
    demo = commands.add_parser(
        "demo",
        help="run everything: the services, an echo upstream and a real Envoy gateway over xDS",
        description="The README's `make run`: the whole stack on this machine, in memory.",
    )
    add_arguments(demo)
    demo.add_argument("--gateway", default="public", help="the Gateway to run (default public)")
    demo.add_argument("--envoy-admin-port", type=int, default=9901, help="Envoy admin port")
    check = commands.add_parser(
        "check",
        help="validate a policy directory offline; exit 1 listing every error",
        description="Parse, validate and compile a policy directory without serving it.",
    )
    check.add_argument("directory", type=Path, help="policy directory")
    add_arguments(check, only=CHECK_OPTIONS)
    explain = commands.add_parser(
        "explain",
        help="decide one described request against a policy directory, offline",
        description="Show which policy and rule allow or deny a request (exit 0 allow, 1 deny).",
    )
    explain_arguments(explain)
    for name, text in (
        ("bootstrap", "print the Envoy bootstrap that points a gateway Envoy at the xds service"),
        ("render", "print a gateway's whole generated Envoy config (static, or for Istio)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--gateway", required=True, help="Gateway name")
        command.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port")
        add_arguments(command, only=GATEWAY_OPTIONS)
        if name == "bootstrap":
            command.add_argument("--node-id", help="node id (default: the gateway's first node)")
            command.add_argument("--delta", action="store_true", help="incremental (delta) ADS")
        else:
            command.add_argument(
                "--istio", action="store_true", help="EnvoyFilters + meshConfig, for Istio"
            )
            command.add_argument(
                "--istio-service",
                default="mixerless.default.svc.cluster.local",
                help="the mixerless Service host name, under Istio",
            )
    return parser


def _check(args: argparse.Namespace) -> int:
    options = build_load_options(args)
    try:
        policy_set = load_directory(args.directory, options)
    except PolicyLoadError as exc:
        for error in exc.errors:
            print(error)
        files = len({error.file for error in exc.errors})
        noun = "error" if len(exc.errors) == 1 else "errors"
        print(f"{len(exc.errors)} {noun} in {files} file(s)", file=sys.stderr)
        return 1
    domains = len(policy_set.ratelimit.domains)
    authz = policy_set.authz
    print(
        f"{args.directory}: OK ({len(policy_set.files)} file(s), "
        f"{domains} rate limit domain(s), {len(authz.policies)} AuthorizationPolicy, "
        f"{len(authz.authentications)} RequestAuthentication, digest {policy_set.digest})"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    import asyncio

    from services import logs
    from services.authz.explain import explain

    logs.configure("warning", "console")  # explain's answer is stdout; logs stay out of it

    try:
        policy_set = load_directory(args.directory, build_load_options(args))
    except PolicyLoadError as exc:
        for error in exc.errors:
            print(error)
        return 2
    try:
        decision, lines = asyncio.run(explain(policy_set.authz, args))
    except ValueError as exc:
        print(f"mixerless explain: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if decision.allowed else 1


def _gateway_command(args: argparse.Namespace) -> int:
    from services.xds.build import Services
    from services.xds.gateway import Endpoint
    from services.xds.gateway_config import gateway_resources
    from services.xds.istio import istio_documents, mesh_config_snippet
    from services.xds.render import bootstrap, static_config, to_yaml

    values = resolve(args, only=GATEWAY_OPTIONS)
    try:
        policy_set = load_directory(Path(values["policies"]), build_load_options(args))
    except PolicyLoadError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 2
    compiled = policy_set.xds.gateway(args.gateway)
    if compiled is None:
        known = ", ".join(g.name for g in policy_set.xds.gateways) or "none"
        print(f"mixerless: no Gateway named '{args.gateway}' (known: {known})", file=sys.stderr)
        return 2
    gateway = compiled.gateway
    host = values["advertise_address"]
    if args.command == "bootstrap":
        node = args.node_id or gateway.nodes[0]
        config = bootstrap(
            node, host, values["xds_port"], admin_port=args.admin_port, delta=args.delta
        )
        print(to_yaml(config), end="")
        return 0
    if args.istio:
        documents = istio_documents(
            gateway,
            compiled.policies,
            service=args.istio_service,
            ratelimit_port=values["ratelimit_port"],
            authz_port=values["authz_port"],
        )
        print("---\n".join(to_yaml(document) for document in documents), end="")
        snippet = mesh_config_snippet(
            gateway, service=args.istio_service, authz_port=values["authz_port"]
        )
        print("# meshConfig (merge into the istio ConfigMap's mesh) for CUSTOM authorization:")
        print("".join(f"# {line}\n" for line in to_yaml(snippet).splitlines()), end="")
        return 0
    services = Services(
        Endpoint(host, values["authz_port"]), Endpoint(host, values["ratelimit_port"])
    )
    resources = gateway_resources(compiled, services)
    print(to_yaml(static_config(resources, args.admin_port)), end="")
    return 0


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    settings = build_settings(args)

    import uvloop

    from services import logs
    from services.demo.runner import DemoError, run_demo
    from services.parent import Parent, plan_layout
    from services.serve import Application

    # --workers N: planned (and its ports checked) before anything starts. The demo is
    # always one process.
    layout = plan_layout(settings) if args.command == "serve" else None

    # Everything imported so far lives as long as the process: keep it out of the
    # collector's full passes, which otherwise pause the loop for ~20 ms under load.
    gc.freeze()

    async def serve() -> None:
        # grpc.aio servers bind to the running loop: build them inside it.
        if args.command == "demo":
            await run_demo(settings, args.gateway, args.envoy_admin_port)
        elif layout is not None:
            await Parent(settings, layout, argv).run_until_signalled()
        else:
            await Application(settings).run_until_signalled()

    role = settings.worker
    fields = {"worker": role.index} if role.is_worker else None
    logs.configure(settings.log_level, settings.log_format, fields)
    try:
        uvloop.run(serve())
    except DemoError as exc:
        print(f"mixerless demo: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "explain":
            return _explain(args)
        if args.command in ("bootstrap", "render"):
            return _gateway_command(args)
        return _serve(args, argv)
    except SettingsError as exc:
        print(f"mixerless: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mixerless: {exc}", file=sys.stderr)
        return 1
