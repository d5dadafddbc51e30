"""The stages of a Check, in Istio's order; each returns a ``Denial`` or what it adds.

1. ``normalize``: TCP checks, the method and the path (query and fragment stripped,
   normalized per meshConfig; 400 if invalid) -> the request's ``Attributes``;
2. ``custom``: each provider whose CUSTOM rule matches is asked; its deny is final
   -> the providers' ``Effects``;
3. ``authenticate``: an invalid token is 401 (403 for a bad audience); no token is
   anonymous -> the token's ``Effects`` and identity;
4. RBAC (``decide.rbac``): AUDIT, DENY, ALLOW -> a ``Verdict``.

``pipeline.run`` chains them and ``answer.answer`` makes the Decision. The stages
talk to the outside only through ``Seams`` (the JWT authenticator, provider clients).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from services.authz import decide
from services.authz.answer import Denial
from services.authz.attributes import Attributes, HeaderValues
from services.authz.client_address import trusted_client_address
from services.authz.jwt.plan import JwtPlan
from services.authz.jwt.result import NO_RULES, JwtResult
from services.authz.mesh_config import MeshSettings
from services.authz.model import (
    NO_EFFECTS,
    RBAC_DENIED,
    CheckInput,
    DynamicMetadata,
    Effects,
    HttpRequest,
    Reason,
)
from services.authz.paths import InvalidPathError, full_path_with_query
from services.authz.plan import WorkloadPlan
from services.authz.providers.client import AuthzProviderClient, ProviderDecision
from services.authz.providers.config import Provider
from services.authz.quota import (
    RATE_LIMITED_STATUS,
    STORE_FAILURE_HEADERS,
    STORE_FAILURE_STATUS,
    Entries,
    QuotaAnswer,
    QuotaCounter,
    QuotaRule,
    QuotaUnavailable,
    upstream_view,
)

TCP_DENIED = Denial(403, "", Reason("tcp", detail="TCP checks are denied"))


class ProviderRegistry(Protocol):
    """Protocol: the client to ask a given extension provider (``ProviderClients``)."""

    def get(self, provider: Provider) -> AuthzProviderClient: ...


class Authenticator(Protocol):
    """Protocol: the JWT step for a request (``JwtAuthenticator``)."""

    async def authenticate(self, plan: JwtPlan, request: HttpRequest) -> JwtResult: ...


@dataclass(frozen=True, slots=True)
class Seams:
    """What the stages reach outside the process through, and where they report trouble."""

    jwt: Authenticator
    providers: ProviderRegistry
    provider_failed: Callable[[str], None]  # called with the provider's name
    quota: QuotaCounter | None = None  # None: no quota can be counted in this process


class Normalized(NamedTuple):
    """The request as the later stages see it: its normalized :path, and its attributes."""

    check: CheckInput
    attributes: Attributes


def normalize(check: CheckInput, mesh: MeshSettings) -> Denial | Normalized:
    """Refuse what Envoy (or mixerless) refuses before any filter; else the attributes."""
    found = _normalized_request(check, mesh)
    if isinstance(found, Denial):
        return found
    check, path_with_query = found
    request = check.request
    attributes = Attributes(
        method=request.method,
        host=request.host.lower(),
        path=path_with_query.partition("?")[0],  # only the part before "?" is normalized
        path_with_query=path_with_query,
        headers=request.headers,
        repeated={name: HeaderValues(v) for name, v in request.repeated.items()},
        source_ip=check.source.address,
        remote_ip=_client_address(check, mesh),
        source_principal=check.source.principal,
        destination_ip=check.destination.address,
        destination_port=check.destination.port,
        sni=check.sni,
    )
    return Normalized(check, attributes)


def quota_view(check: CheckInput, mesh: MeshSettings) -> Denial | tuple[HttpRequest, str]:
    """What the quota step reads of a request: the request as normalized, and the client
    address; without the attributes ``normalize`` builds for RBAC (a cached outcome's
    request needs only this)."""
    found = _normalized_request(check, mesh)
    if isinstance(found, Denial):
        return found
    return found[0].request, _client_address(found[0], mesh)


def _normalized_request(check: CheckInput, mesh: MeshSettings) -> Denial | tuple[CheckInput, str]:
    """``check`` with its :path normalized, and that path; or why Envoy refuses it."""
    if not check.http:
        # A network-filter check: HTTP-only rules cannot be evaluated as Istio does for
        # TCP, so mixerless (an HTTP gateway authorizer) refuses rather than guess.
        return TCP_DENIED
    request = check.request
    if not request.method.isupper():  # Envoy refuses methods that are not upper-case
        return Denial(400, "Bad Request", Reason("method", detail=request.method))
    try:
        path_with_query = full_path_with_query(request.path, mesh.path_normalization)
    except InvalidPathError as exc:
        return Denial(400, "Bad Request", Reason("path", detail=str(exc)))
    if path_with_query != request.path:
        # Envoy normalizes before any filter: JWT challenges and providers see this path.
        check = replace(check, request=replace(request, path=path_with_query))
    return check, path_with_query


def _client_address(check: CheckInput, mesh: MeshSettings) -> str:
    return trusted_client_address(
        check.source.address,
        check.request.headers.get("x-forwarded-for"),
        mesh.num_trusted_proxies,
    )


async def custom(
    plan: WorkloadPlan,
    request: Normalized,
    providers: Mapping[str, Provider],
    seams: Seams,
) -> Denial | Effects:
    """Ask the provider of each matching CUSTOM policy; the first denial is final."""
    if not plan.custom:
        return NO_EFFECTS
    effects = NO_EFFECTS
    for match in decide.custom_matches(plan, request.attributes):
        provider = providers.get(match.policy.provider)
        if provider is None or plan.custom_providers > 1:
            # Istio turns CUSTOM rules into DENY for an unknown provider, and for a
            # workload with more than one (without PILOT_ENABLE_MULTIPLE_CUSTOM_...).
            detail = (
                f"unknown provider '{match.policy.provider}'"
                if provider is None
                else "more than one CUSTOM provider applies to this workload"
            )
            return Denial(403, RBAC_DENIED, Reason("custom", match.policy.key, match.rule, detail))
        decision = await seams.providers.get(provider).check(request.check)
        if decision.error:
            seams.provider_failed(provider.name)
        if not decision.allowed:
            reason = Reason("custom", match.policy.key, match.rule, match.policy.provider)
            headers = tuple(decision.downstream_headers)
            return Denial(decision.status, decision.body, reason, headers)
        effects = effects.plus(_provider_effects(decision))
    return effects


def _provider_effects(decision: ProviderDecision) -> Effects:
    metadata = decision.dynamic_metadata
    return Effects(
        upstream=tuple(decision.upstream_headers),
        upstream_remove=tuple(decision.upstream_headers_to_remove),
        downstream=tuple(decision.downstream_headers),
        query_set=tuple(decision.query_parameters_to_set),
        query_remove=tuple(decision.query_parameters_to_remove),
        metadata=DynamicMetadata(metadata) if metadata else None,
    )


async def authenticate(
    plan: WorkloadPlan, request: HttpRequest, authenticator: Authenticator
) -> Denial | JwtResult:
    """The JWT step: a bad token is final; otherwise the result goes on, carrying its
    ``effects`` (a good token's header changes and metadata, or, with no token, the
    removal of client-sent output headers) and the verified identity when ``ok``."""
    if not plan.jwt_rules or _cors_preflight(request):
        return NO_RULES
    result = await authenticator.authenticate(plan.jwt, request)
    if result.status == "invalid":
        reason = Reason("jwt", detail=result.body)
        return Denial(result.http_status, result.body, reason, tuple(result.response_headers))
    return result


def _cors_preflight(request: HttpRequest) -> bool:
    """An OPTIONS request with Origin and Access-Control-Request-Method: Istio's jwt_authn
    (``bypass_cors_preflight``) skips JWT checks for it; authorization still runs."""
    headers = request.headers
    return (
        request.method == "OPTIONS"
        and "origin" in headers
        and "access-control-request-method" in headers
    )


QUOTA_STORE_FAILED = Reason("quota", detail="the counter store could not count")


async def quota(
    rules: tuple[QuotaRule, ...],
    request: HttpRequest,
    effects: Effects,
    client: str,
    counter: QuotaCounter | None,
) -> Denial | QuotaAnswer:
    """The quota step of an allowed request on a route with quotas: count what the rules'
    descriptors say (one call, hits 1), refuse it over quota, and decide by the rules'
    failure mode when nothing could be counted."""
    seen = request  # the header view with the Check's changes is built only when read
    if any(rule.reads_headers for rule in rules):
        seen = upstream_view(request, effects.upstream, effects.upstream_remove)
    counted: list[tuple[QuotaRule, Entries]] = []
    for rule in rules:
        entries = rule.descriptor(seen, effects.metadata, client)
        if entries is not None:
            counted.append((rule, entries))
    if not counted:
        return QuotaAnswer(False)
    domain = counted[0][0].domain
    try:
        if counter is None:
            raise QuotaUnavailable("no counter store in this process")
        found = await counter(domain, [entries for _, entries in counted])
    except QuotaUnavailable:
        if any(rule.deny_on_store_failure for rule, _ in counted):
            return Denial(STORE_FAILURE_STATUS, "", QUOTA_STORE_FAILED, STORE_FAILURE_HEADERS)
        return QuotaAnswer(False)
    if found.over:
        policies = ", ".join(rule.policy for rule, _ in counted)
        reason = Reason("quota", policies, detail="over quota")
        return Denial(RATE_LIMITED_STATUS, "", reason, found.headers)
    return found
