"""The kinds the xds service reads, and what it makes of them as a set.

``Gateway`` and ``RateLimitPolicy`` (``mixerless.io/v1alpha1``). Linking checks
what they name (a policy's gateway and routes; a ``directResponse`` route only where the
Check counts its quota, since Envoy's filter cannot; node ids served by one gateway only),
compiles each gateway's Envoy resources once, and derives each gateway's rate limit
domain: the envoyproxy/ratelimit descriptors its policies count by, which the catalog
hands to the rate limit service.
"""

from dataclasses import dataclass
from typing import Any

from services.policy.kinds import Collected, Compiled, DocumentKind
from services.xds.build import ListenerSettings
from services.xds.direct_response import NOT_RATE_LIMITED
from services.xds.gateway import Gateway, compile_gateway
from services.xds.gateway_config import GatewayConfig, compile_gateway_config
from services.xds.ratelimit_policy import (
    RateLimitPolicy,
    compile_rate_limit_policy,
    counted_in_check,
    descriptor_config,
)

API_VERSION = "mixerless.io/v1alpha1"

GATEWAY: DocumentKind[Gateway] = DocumentKind(
    "Gateway",
    frozenset({(API_VERSION, "Gateway")}),
    compile_gateway,
    key=lambda gateway: gateway.name,
)
RATE_LIMIT_POLICY: DocumentKind[RateLimitPolicy] = DocumentKind(
    "RateLimitPolicy",
    frozenset({(API_VERSION, "RateLimitPolicy")}),
    compile_rate_limit_policy,
    key=lambda policy: policy.key,
)
KINDS = (GATEWAY, RATE_LIMIT_POLICY)


@dataclass(frozen=True, slots=True)
class XdsConfig:
    """Every gateway of a policy set, compiled (each names the Envoy nodes it serves)."""

    gateways: tuple[GatewayConfig, ...] = ()

    def gateway(self, name: str) -> GatewayConfig | None:
        return next((config for config in self.gateways if config.name == name), None)


@dataclass(frozen=True, slots=True)
class Linked:
    """What linking gives: the xds config, and the rate limit documents it derived."""

    config: XdsConfig
    ratelimit_documents: tuple[Compiled[dict[str, Any]], ...]


def link(collected: Collected, settings: ListenerSettings) -> Linked:
    """Cross-check the gateways and their policies, then compile each gateway once.

    Problems go to the sink of the document they are about; a gateway is compiled
    only when no Gateway or RateLimitPolicy had errors (the build would repeat them).
    """
    gateways = collected.of(GATEWAY)
    policies = collected.of(RATE_LIMIT_POLICY)
    by_name = {gateway.value.name: gateway.value for gateway in gateways}
    nodes: dict[str, str] = {}
    for known in gateways:
        for node in known.value.nodes:
            if node in nodes:
                known.sink.add(known.line, "spec.nodes", f"node '{node}' also serves {nodes[node]}")
            nodes[node] = known.value.name
    derived: dict[str, list[dict[str, Any]]] = {}
    for quota in policies:
        target = by_name.get(quota.value.gateway)
        if target is None:
            message = f"no Gateway named '{quota.value.gateway}'"
            quota.sink.add(quota.line, "spec.targetRef.name", message)
            continue
        known_routes = {route.name: route for route in target.routes}
        for name in quota.value.routes:
            route = known_routes.get(name)
            if route is None:
                message = f"Gateway {target.name} has no route '{name}'"
                quota.sink.add(quota.line, "spec.routes", message)
            elif route.direct_response is not None and not counted_in_check(target, route):
                why = "authz: false" if not route.authz else "the Gateway's rateLimit.address"
                message = (
                    f"route '{name}' of Gateway {target.name}: {NOT_RATE_LIMITED}, and with "
                    f"{why} it is not counted inside the Check either"
                )
                quota.sink.add(quota.line, "spec.routes", message)
        derived.setdefault(target.name, []).append(descriptor_config(quota.value))
    documents = tuple(
        Compiled({"domain": g.value.domain, "descriptors": derived[g.value.name]}, g.line, g.sink)
        for g in gateways
        if g.value.name in derived
    )
    if any(g.sink for g in gateways) or any(p.sink for p in policies):
        return Linked(XdsConfig(), documents)
    compiled = []
    for gateway in gateways:
        own = tuple(p.value for p in policies if p.value.gateway == gateway.value.name)
        try:
            compiled.append(compile_gateway_config(gateway.value, own, settings))
        except ValueError as exc:
            message = f"Envoy configuration cannot be built: {exc}"
            gateway.sink.add(gateway.line, "spec", message)
    return Linked(XdsConfig(tuple(compiled)), documents)
