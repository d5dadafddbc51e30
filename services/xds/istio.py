"""The generated configuration for gateways that Istio runs: EnvoyFilter patches, and
the meshConfig extension provider that delegates authorization to mixerless.

Under Istio, Istio's own filters enforce AuthorizationPolicy and RequestAuthentication;
what mixerless adds is (1) rate limiting, as in Istio's rate limiting task (the
ratelimit filter before the router, and route rate limit actions, which mixerless
derives from RateLimitPolicies so they match its descriptors), and (2) CUSTOM
authorization: an ``envoyExtAuthzGrpc`` extension provider pointing at mixerless,
which AuthorizationPolicies with ``action: CUSTOM`` then name.
"""

from collections.abc import Sequence
from typing import Any

from services.xds.gateway import Gateway
from services.xds.ratelimit_policy import RateLimitPolicy, route_actions

RATELIMIT_FILTER = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"


def istio_documents(
    gateway: Gateway,
    policies: Sequence[RateLimitPolicy],
    *,
    service: str,
    ratelimit_port: int,
    authz_port: int,
) -> list[dict[str, Any]]:
    """EnvoyFilters for ``gateway`` (selected by its labels) and a meshConfig snippet.

    ``service`` is the Kubernetes host name of the mixerless Service
    (``mixerless.istio-system.svc.cluster.local``).
    """
    cluster = f"outbound|{ratelimit_port}||{service}"
    selector = {"labels": dict(gateway.meta.labels)}
    metadata = {"namespace": gateway.meta.namespace}
    filter_patch = {
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": "GATEWAY",
            "listener": {
                "filterChain": {
                    "filter": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": {"name": "envoy.filters.http.router"},
                    }
                }
            },
        },
        "patch": {
            "operation": "INSERT_BEFORE",
            "value": {
                "name": "envoy.filters.http.ratelimit",
                "typed_config": {
                    "@type": RATELIMIT_FILTER,
                    "domain": gateway.domain,
                    "failure_mode_deny": not gateway.rate_limit.fail_open,
                    "timeout": f"{gateway.rate_limit.timeout}s",
                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                    "rate_limit_service": {
                        "transport_api_version": "V3",
                        "grpc_service": {
                            "envoy_grpc": {"cluster_name": cluster, "authority": service}
                        },
                    },
                },
            },
        },
    }
    route_patches = []
    everywhere = [route_actions(p) for p in policies if not p.routes]
    if everywhere:
        route_patches.append(
            {
                "applyTo": "VIRTUAL_HOST",
                "match": {"context": "GATEWAY"},
                "patch": {"operation": "MERGE", "value": {"rate_limits": everywhere}},
            }
        )
    for route in gateway.routes:
        actions = [route_actions(p) for p in policies if route.name in p.routes]
        actions += [dict(entry) for entry in route.rate_limits]
        if actions:
            route_patches.append(
                {
                    "applyTo": "HTTP_ROUTE",
                    "match": {
                        "context": "GATEWAY",
                        "routeConfiguration": {"vhost": {"route": {"name": route.name}}},
                    },
                    "patch": {"operation": "MERGE", "value": {"route": {"rate_limits": actions}}},
                }
            )
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": {"name": f"{gateway.name}-ratelimit", **metadata},
            "spec": {"workloadSelector": selector, "configPatches": [filter_patch]},
        }
    ]
    if route_patches:
        documents.append(
            {
                "apiVersion": "networking.istio.io/v1alpha3",
                "kind": "EnvoyFilter",
                "metadata": {"name": f"{gateway.name}-ratelimit-actions", **metadata},
                "spec": {"workloadSelector": selector, "configPatches": route_patches},
            }
        )
    return documents


def mesh_config_snippet(gateway: Gateway, *, service: str, authz_port: int) -> dict[str, Any]:
    """The meshConfig extension provider that sends CUSTOM authorization to mixerless
    (merge it into the istio ConfigMap's ``mesh``, or IstioOperator ``meshConfig``)."""
    provider: dict[str, Any] = {
        "service": service,
        "port": authz_port,
        "timeout": f"{gateway.authz.timeout}s",
    }
    if gateway.authz.fail_open:
        provider["failOpen"] = True
    return {"extensionProviders": [{"name": "mixerless", "envoyExtAuthzGrpc": provider}]}
