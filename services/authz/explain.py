"""``mixerless explain``: run one described request through the authz service, offline.

The same ``AuthzService`` and stages the server runs decide, and a ``Trace`` of the
stages is what gets printed: the workload's plan, the normalized path, the decision.
Only CUSTOM providers are replaced by a stand-in that records which provider would
have been asked and allows (explain never calls out to providers). Remote JWKS are
fetched for real.
"""

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.authz.answer import Denial
from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.keys import KeyResolver, RemoteKeySource
from services.authz.model import CheckInput, Decision, HttpRequest, Peer
from services.authz.pipeline import Trace
from services.authz.plan import WorkloadDefaults
from services.authz.providers.client import AuthzProviderClient, ProviderDecision
from services.authz.providers.config import Provider
from services.authz.service import AuthzService
from services.authz.stages import Normalized
from services.authz.workloads import parse_labels
from services.metrics import Metrics


@dataclass
class _OfflineProvider:
    name: str
    asked: list[str] = field(default_factory=list)

    async def check(self, check: CheckInput) -> ProviderDecision:
        self.asked.append(self.name)
        return ProviderDecision(True)

    async def close(self) -> None:
        return None


@dataclass
class _OfflineProviders:
    asked: list[str] = field(default_factory=list)

    def get(self, provider: Provider) -> AuthzProviderClient:
        return _OfflineProvider(provider.name, self.asked)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="policy directory")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--host", default="localhost", help=":authority (default localhost)")
    parser.add_argument("--path", default="/", help="path as sent, with query (default /)")
    parser.add_argument(
        "-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a header"
    )
    parser.add_argument("--token", help="a JWT, sent as 'Authorization: Bearer <token>'")
    parser.add_argument("--source-ip", default="127.0.0.1", help="the peer address")
    parser.add_argument("--xff", help="X-Forwarded-For as Envoy passes it (peer appended)")
    parser.add_argument("--principal", default="", help="peer SPIFFE identity (mTLS)")
    parser.add_argument("--port", type=int, default=8080, help="destination (listener) port")
    parser.add_argument("--namespace", default="", help="gateway namespace (context extension)")
    parser.add_argument("--labels", default="", help="gateway labels k=v,... (context extension)")
    parser.add_argument("--gateway", default="", help="Gateway name (context extension)")
    parser.add_argument("--workload-namespace", default="istio-system")
    parser.add_argument("--workload-labels", default="istio=ingressgateway")


def describe_request(args: argparse.Namespace) -> CheckInput:
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"-H takes 'name: value', got {item!r}")
        headers[name.strip().lower()] = value.strip()
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    if args.xff:
        headers["x-forwarded-for"] = args.xff
    context = {
        key: value
        for key, value in (
            ("namespace", args.namespace),
            ("labels", args.labels),
            ("gateway", args.gateway),
        )
        if value
    }
    return CheckInput(
        request=HttpRequest(method=args.method, host=args.host, path=args.path, headers=headers),
        source=Peer(args.source_ip, 0, args.principal),
        destination=Peer("", args.port),
        context=context,
    )


def _policy_list(title: str, policies: Sequence[object]) -> str:
    names = ", ".join(getattr(p, "key", "?") for p in policies) or "none"
    return f"  {title}: {names}"


async def explain(config: AuthzConfig, args: argparse.Namespace) -> tuple[Decision, list[str]]:
    """The decision for the described request, and the lines that explain it."""
    parse_labels(args.workload_labels)
    check = describe_request(args)
    providers = _OfflineProviders()
    jwt = JwtAuthenticator(KeyResolver(remote=RemoteKeySource()))
    service = AuthzService(
        lambda: config,
        jwt,
        providers,
        Metrics(),
        WorkloadDefaults(args.workload_namespace, args.workload_labels),
    )
    trace = Trace()
    try:
        decision = await service.check(check, trace)
    finally:
        await jwt.aclose()
    assert trace.plan is not None  # a loaded config always has a plan
    plan = trace.plan
    workload = plan.workload
    labels = ",".join(f"{k}={v}" for k, v in sorted(workload.labels)) or "(none)"
    lines = [
        f"workload: namespace {workload.namespace}, labels {labels}"
        + (f", gateway {workload.gateway}" if workload.gateway else ""),
        "policies that apply:",
        _policy_list("CUSTOM", plan.custom),
        _policy_list("AUDIT", plan.audit),
        _policy_list("DENY", plan.deny),
        _policy_list("ALLOW", plan.allow),
        _policy_list("dry-run", plan.dry_run),
        "  JWT issuers: " + (", ".join(r.issuer for r in plan.jwt_rules) or "none"),
        _path_line(trace.normalized),
    ]
    for name in providers.asked:
        lines.append(f"CUSTOM: provider {name} would be asked (explain assumes it allows)")
    verdict = "ALLOW" if decision.allowed else f"DENY {decision.status} {decision.body!r}"
    lines.append(f"decision: {verdict}")
    lines.append(f"decided by: {decision.reason}")
    lines.extend(f"audit: {entry}" for entry in decision.audit)
    lines.extend(decision.dry_run)  # each already says "dry-run ..."
    if decision.allowed and decision.upstream_headers:
        pairs = ", ".join(f"{k}: {v}" for k, v in decision.upstream_headers)
        lines.append(f"headers set upstream: {pairs}")
    if decision.upstream_headers_to_remove:
        lines.append("headers removed upstream: " + ", ".join(decision.upstream_headers_to_remove))
    return decision, lines


def _path_line(normalized: Normalized | Denial | None) -> str:
    """The path the policies saw, as the normalize stage made it (or why it refused)."""
    if isinstance(normalized, Normalized):
        return f"path: {normalized.attributes.path}"
    if isinstance(normalized, Denial) and normalized.reason.stage == "path":
        return f"path: invalid ({normalized.reason.detail})"
    reason = normalized.reason if normalized is not None else "not reached"
    return f"path: not normalized ({reason})"
