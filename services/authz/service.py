"""One authorization decision, in Istio's order, independent of gRPC.

1. the path: query and fragment stripped, normalized per meshConfig (400 if invalid);
2. CUSTOM: each provider whose CUSTOM rule matches is asked; its deny is final;
3. JWT: an invalid token is 401 (403 for a bad audience); no token is anonymous;
4. AUDIT, DENY, ALLOW (``decide.rbac``).

An allowed request carries the JWT and provider header changes upstream, and the
verified claims as dynamic metadata (for rate limits keyed on them).
"""

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from services.authz import decide
from services.authz.attributes import Attributes, HeaderValues
from services.authz.client_address import trusted_client_address
from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.model import RBAC_DENIED, CheckInput, Decision, HttpRequest, Reason
from services.authz.paths import InvalidPathError, full_path_with_query
from services.authz.providers.client import AuthzProviderClient
from services.authz.providers.config import Provider
from services.authz.workloads import Workload, parse_labels
from services.metrics import Metrics

log = structlog.get_logger("mixerless.authz")

METADATA_CACHE_SIZE = 10_000
NO_POLICY = Decision(False, 503, "mixerless: no authorization policy loaded\n")


class ProviderRegistry(Protocol):
    """Protocol: the client to ask a given extension provider (``ProviderClients``)."""

    def get(self, provider: Provider) -> AuthzProviderClient: ...


@dataclass(frozen=True, slots=True)
class WorkloadDefaults:
    """The workload assumed when a CheckRequest's context extensions do not name one."""

    namespace: str = "istio-system"
    labels: str = "istio=ingressgateway"


class AuthzService:
    """Answers Check calls against the config ``current_config`` returns."""

    def __init__(
        self,
        current_config: Callable[[], AuthzConfig | None],
        jwt: JwtAuthenticator,
        providers: ProviderRegistry,
        metrics: Metrics,
        defaults: WorkloadDefaults,
    ) -> None:
        self._current_config = current_config
        self._jwt = jwt
        self._providers = providers
        self._metrics = metrics
        self._default_labels = parse_labels(defaults.labels)
        self._default_namespace = defaults.namespace
        self._workloads: dict[tuple[str, str, str], Workload] = {}
        # Dynamic metadata per verified token: the JWT cache hands back the same claims
        # object for the same token, so the same metadata object can be handed on (and
        # the servicer's protobuf Struct for it reused).
        self._metadata: OrderedDict[int, tuple[object, dict[str, Any]]] = OrderedDict()

    def _token_metadata(self, result: Any) -> dict[str, Any]:
        """The metadata of a verified token, the same object for the same cached token."""
        claims = result.claims
        cached = self._metadata.get(id(claims))
        if cached is not None and cached[0] is claims:
            self._metadata.move_to_end(id(claims))
            return cached[1]
        metadata = _metadata_for(result)
        self._metadata[id(claims)] = (claims, metadata)
        if len(self._metadata) > METADATA_CACHE_SIZE:
            self._metadata.popitem(last=False)
        return metadata

    def workload(self, context: Any) -> Workload:
        """The workload named by the ``namespace``/``labels``/``gateway`` context extensions."""
        key = (context.get("namespace", ""), context.get("labels", ""), context.get("gateway", ""))
        found = self._workloads.get(key)
        if found is None:
            namespace, labels, gateway = key
            try:
                # A labels extension that is present, even empty, names the gateway's own
                # labels; only its absence falls back to --workload-labels.
                parsed = parse_labels(labels) if "labels" in context else self._default_labels
            except ValueError:
                parsed = self._default_labels
            found = Workload.of(namespace or self._default_namespace, parsed, gateway)
            if len(self._workloads) < 4096:
                self._workloads[key] = found
        return found

    async def check(self, check: CheckInput) -> Decision:
        config = self._current_config()
        if config is None:
            return NO_POLICY
        if not check.http:
            # A network-filter check: HTTP-only rules cannot be evaluated as Istio does for
            # TCP, so mixerless (an HTTP gateway authorizer) refuses rather than guess.
            return Decision(False, 403, "", reason=Reason("tcp", detail="TCP checks are denied"))
        request = check.request
        mesh = config.mesh
        if not request.method.isupper():  # Envoy refuses methods that are not upper-case
            return Decision(
                False, 400, "Bad Request", reason=Reason("method", detail=request.method)
            )
        try:
            path_with_query = full_path_with_query(request.path, mesh.path_normalization)
        except InvalidPathError as exc:
            return Decision(False, 400, "Bad Request", reason=Reason("path", detail=str(exc)))
        path = path_with_query.partition("?")[0]  # only the part before "?" is normalized
        if path_with_query != request.path:
            # Envoy normalizes before any filter: JWT challenges and providers see this path.
            request = replace(request, path=path_with_query)
            check = replace(check, request=request)
        policies = config.for_workload(self.workload(check.context))
        attributes = Attributes(
            method=request.method,
            host=request.host.lower(),
            path=path,
            path_with_query=path_with_query,
            headers=request.headers,
            repeated={name: HeaderValues(v) for name, v in request.repeated.items()},
            source_ip=check.source.address,
            remote_ip=trusted_client_address(
                check.source.address,
                request.headers.get("x-forwarded-for"),
                mesh.num_trusted_proxies,
            ),
            source_principal=check.source.principal,
            destination_ip=check.destination.address,
            destination_port=check.destination.port,
            sni=check.sni,
        )

        upstream: list[tuple[str, str]] = []
        query_set: list[tuple[str, str]] = []
        query_remove: list[str] = []
        provider_metadata: dict[str, Any] = {}
        upstream_remove: list[str] = []
        downstream: list[tuple[str, str]] = []
        for match in decide.custom_matches(policies, attributes):
            provider = mesh.providers.get(match.policy.provider)
            reason = Reason("custom", match.policy.key, match.rule, match.policy.provider)
            if provider is None or policies.custom_providers > 1:
                # Istio turns CUSTOM rules into DENY for an unknown provider, and for a
                # workload with more than one (without PILOT_ENABLE_MULTIPLE_CUSTOM_...).
                detail = (
                    f"unknown provider '{match.policy.provider}'"
                    if provider is None
                    else "more than one CUSTOM provider applies to this workload"
                )
                denied = Reason("custom", match.policy.key, match.rule, detail)
                return Decision(False, 403, RBAC_DENIED, reason=denied)
            answer = await self._providers.get(provider).check(check)
            if answer.error:
                self._metrics.backend_errors.labels(f"provider:{provider.name}").inc()
            if not answer.allowed:
                return Decision(
                    False,
                    answer.status,
                    answer.body,
                    downstream_headers=tuple(answer.downstream_headers),
                    reason=reason,
                )
            upstream.extend(answer.upstream_headers)
            upstream_remove.extend(answer.upstream_headers_to_remove)
            downstream.extend(answer.downstream_headers)
            query_set.extend(answer.query_parameters_to_set)
            query_remove.extend(answer.query_parameters_to_remove)
            if answer.dynamic_metadata:
                provider_metadata.update(answer.dynamic_metadata)

        metadata: dict[str, Any] | None = dict(provider_metadata) if provider_metadata else None
        if policies.jwt_rules and not _cors_preflight(request):
            result = await self._jwt.authenticate(policies.jwt_rules, request)
            if result.status == "invalid":
                return Decision(
                    False,
                    result.http_status,
                    result.body,
                    downstream_headers=tuple(result.response_headers),
                    reason=Reason("jwt", detail=result.body),
                )
            # Output headers a client sent itself are removed whether or not it sent a
            # token, so the upstream can trust them (Envoy's jwt_authn does the same).
            upstream_remove.extend(result.headers_to_remove)
            if result.status == "ok":
                attributes.issuer = result.issuer
                attributes.subject = result.subject
                attributes.claims = result.claims
                upstream.extend(result.headers_to_add)
                query_remove.extend(result.query_params_to_remove)
                token_metadata = self._token_metadata(result)
                metadata = {**metadata, **token_metadata} if metadata else token_metadata

        outcome = decide.rbac(policies, attributes)
        if outcome.audit or outcome.dry_run:
            log.info(
                "policy audit",
                audit=list(outcome.audit),
                dry_run=list(outcome.dry_run),
                decision="allow" if outcome.allowed else "deny",
                path=path,
            )
        if not outcome.allowed:
            return Decision(
                False,
                403,
                RBAC_DENIED,
                reason=outcome.reason,
                audit=outcome.audit,
                dry_run=outcome.dry_run,
            )
        return Decision(
            True,
            upstream_headers=tuple(upstream),
            upstream_headers_to_remove=tuple(upstream_remove),
            downstream_headers=tuple(downstream),
            query_parameters_to_set=tuple(query_set),
            query_parameters_to_remove=tuple(query_remove),
            dynamic_metadata=metadata,
            reason=outcome.reason,
            audit=outcome.audit,
            dry_run=outcome.dry_run,
        )


def _metadata_for(result: Any) -> dict[str, Any]:
    """What a verified token puts in the CheckResponse's dynamic metadata.

    ``claim_text`` has every top-level claim as a string (lists joined with ``,``,
    other values as JSON): Envoy's rate limit ``metadata`` action reads only strings,
    so this is what a quota counted by a claim keys on.
    """
    claims = dict(result.claims or {})
    return {
        "principal": result.principal or "",
        "issuer": result.issuer,
        "subject": result.subject or "",
        "claims": claims,
        "claim_text": {name: _claim_text(value) for name, value in claims.items()},
    }


def _claim_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _cors_preflight(request: HttpRequest) -> bool:
    """An OPTIONS request with Origin and Access-Control-Request-Method: Istio's jwt_authn
    (``bypass_cors_preflight``) skips JWT checks for it; authorization still runs."""
    headers = request.headers
    return (
        request.method == "OPTIONS"
        and "origin" in headers
        and "access-control-request-method" in headers
    )
