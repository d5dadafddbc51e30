"""Static Envoy configurations for the baseline stacks of ``compare.py``.

Every stack serves the same gateway: one listener whose routes (``/healthz``, ``/product``
and ``/``) proxy to a second listener of the same Envoy that answers 200 itself
(``backend``, a ``direct_response``), so what differs between stacks is only the policy
work in front of the router. (A route answered by ``direct_response`` directly would do:
Envoy's ratelimit filter skips routes without a backend, so the upstream hop it is.)

* ``alone``: nothing;
* ``ext_authz``: one ext_authz hop to a gRPC server (the no-op servers), configured as
  mixerless's xds service configures its own (``services/xds/build.py``);
* ``in_proxy``: Envoy's own ``jwt_authn`` + ``rbac`` + ``local_ratelimit``, a hand
  translation of the demo policies (``policies/authz``, ``policies/gateway``): the same
  issuers and keys (read from the RequestAuthentication files), the same two DENY rules,
  and the same per-user quota on ``/product`` as a per-user token bucket.

The mixerless stacks get their configuration over xDS from ``mixerless serve`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# The type URLs mixerless's own gateways use, so the baselines are configured alike.
from services.xds.build import EXT_AUTHZ, EXT_AUTHZ_PER_ROUTE, HCM, HTTP_OPTIONS, ROUTER

_T = "type.googleapis.com/"
JWT_AUTHN = _T + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
RBAC = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
LOCAL_RATELIMIT = _T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
STAT_PREFIX = "gateway"  # so every static stack's counters are http.gateway.*
BACKEND = "backend"
BODY = "ok\n"
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _always() -> dict[str, Any]:
    return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "x"}


def _route(name: str, match: dict[str, Any], per_filter: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = {"name": name, "match": match, "route": {"cluster": "backend"}}
    if per_filter:
        route["typed_per_filter_config"] = per_filter
    return route


def _listener(
    name: str, port: int, routes: list[dict[str, Any]], filters: list[dict[str, Any]]
) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "use_remote_address": True,
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            *filters,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    return {
        "name": name,
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _static_cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def backend_listener(port: int) -> dict[str, Any]:
    """The upstream every stack's gateway routes to: a listener answering 200 itself."""
    answer = {
        "name": "ok",
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": BODY}},
    }
    return _listener(BACKEND, port, [answer], [])


def _bootstrap(
    admin_port: int,
    port: int,
    backend_port: int,
    filters: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [
                _listener(STAT_PREFIX, port, routes, filters),
                backend_listener(backend_port),
            ],
            "clusters": [*clusters, _static_cluster(BACKEND, backend_port)],
        },
    }


def alone(admin_port: int, port: int, backend_port: int) -> dict[str, Any]:
    """Envoy with no policy at all: the ceiling of the gateway."""
    routes = [
        _route("health", {"path": "/healthz"}, {}),
        _route("products", {"prefix": "/product"}, {}),
        _route("default", {"prefix": "/"}, {}),
    ]
    return _bootstrap(admin_port, port, backend_port, [], routes, [])


def ext_authz(admin_port: int, port: int, backend_port: int, authz_port: int) -> dict[str, Any]:
    """One ext_authz hop to the gRPC server on ``authz_port`` before every route but /healthz."""
    cluster = _static_cluster("authz", authz_port, http2=True)
    authz = {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": EXT_AUTHZ,
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "1s"},
            "failure_mode_allow": False,
            "include_peer_certificate": True,
            "include_tls_session": True,
            "encode_raw_headers": True,
        },
    }
    skip = {"envoy.filters.http.ext_authz": {"@type": EXT_AUTHZ_PER_ROUTE, "disabled": True}}
    routes = [
        _route("health", {"path": "/healthz"}, skip),
        _route("products", {"prefix": "/product"}, {}),
        _route("default", {"prefix": "/"}, {}),
    ]
    return _bootstrap(admin_port, port, backend_port, [authz], routes, [cluster])


def _documents(policies: Path, kind: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(policies.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == kind:
                found.append(document)
    return found


def _jwt_providers(policies: Path) -> dict[str, Any]:
    """One jwt_authn provider per ``jwtRules`` entry of the RequestAuthentication files."""
    providers: dict[str, Any] = {}
    for document in _documents(policies, "RequestAuthentication"):
        for index, rule in enumerate(document["spec"].get("jwtRules", [])):
            provider: dict[str, Any] = {
                "issuer": rule["issuer"],
                "local_jwks": {"inline_string": rule["jwks"]},
                "payload_in_metadata": "payload",
                "forward": True,
                "claim_to_headers": [
                    {"header_name": out["header"], "claim_name": out["claim"]}
                    for out in rule.get("outputClaimToHeaders", [])
                ],
                # mixerless keeps verified tokens in a cache too; so does Envoy with this.
                "jwt_cache_config": {"jwt_cache_size": 4096},
            }
            if rule.get("audiences"):
                provider["audiences"] = rule["audiences"]
            providers[f"{document['metadata']['name']}-{index}"] = provider
    return providers


def _paths(*patterns: str) -> dict[str, Any]:
    """Istio's path semantics: ``/x/*`` is the prefix ``/x/``, anything else is exact."""
    rules = [
        {"url_path": {"path": {"prefix": p[:-1]} if p.endswith("/*") else {"exact": p}}}
        for p in patterns
    ]
    return {"or_rules": {"rules": rules}}


def _payload(*keys: str) -> list[dict[str, str]]:
    return [{"key": "payload"}, *({"key": key} for key in keys)]


def _in_proxy_rbac() -> dict[str, Any]:
    """The two DENY policies of policies/authz/gateway-access.yaml, as Istio would emit them."""
    authenticated = {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": _payload(),
            "value": {"present_match": True},
        }
    }
    staff = {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": _payload("groups"),
            "value": {"list_match": {"one_of": {"string_match": {"exact": "staff"}}}},
        }
    }
    return {
        "action": "DENY",
        "policies": {
            "require-jwt": {
                "permissions": [_paths("/api/*", "/product", "/product/*")],
                "principals": [{"not_id": authenticated}],
            },
            "admin-is-staff-only": {
                "permissions": [_paths("/admin", "/admin/*")],
                "principals": [{"not_id": staff}],
            },
        },
    }


def quota(policies: Path) -> tuple[int, int]:
    """(requests, seconds) of the demo's per-user /product RateLimitPolicy."""
    for document in _documents(policies, "RateLimitPolicy"):
        limit = document["spec"]["limit"]
        return int(limit["requests"]), UNIT_SECONDS[limit["unit"]]
    raise ValueError(f"no RateLimitPolicy under {policies}")


def in_proxy(admin_port: int, port: int, backend_port: int, policies: Path) -> dict[str, Any]:
    """jwt_authn + RBAC + local_ratelimit: the demo policies enforced inside Envoy."""
    requirements = [{"provider_name": name} for name in _jwt_providers(policies)]
    jwt = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": _jwt_providers(policies),
            # As Istio: a request without a token passes (RBAC decides), a bad one gets 401.
            "rules": [
                {
                    "match": {"prefix": "/"},
                    "requires": {
                        "requires_any": {"requirements": [*requirements, {"allow_missing": {}}]}
                    },
                }
            ],
        },
    }
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": RBAC, "rules": _in_proxy_rbac()},
    }
    # The filter is off by default and switched on, with its buckets, on the /product route.
    limiter = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {"@type": LOCAL_RATELIMIT, "stat_prefix": "quota"},
    }
    requests, seconds = quota(policies)
    per_user = {
        "@type": LOCAL_RATELIMIT,
        "stat_prefix": "quota",
        "token_bucket": {
            "max_tokens": 1_000_000_000,
            "tokens_per_fill": 1_000_000_000,
            "fill_interval": "1s",
        },
        "filter_enabled": _always(),
        "filter_enforced": _always(),
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        # An empty value makes one bucket per distinct user (Envoy's dynamic descriptors).
        "descriptors": [
            {
                "entries": [{"key": "user", "value": ""}],
                "token_bucket": {
                    "max_tokens": requests,
                    "tokens_per_fill": requests,
                    "fill_interval": f"{seconds}s",
                },
            }
        ],
        "max_dynamic_descriptors": 100_000,
        # Otherwise the per-user buckets are not enforced (seen with Envoy 1.40).
        "always_consume_default_token_bucket": False,
        "rate_limits": [
            {
                "actions": [
                    {"request_headers": {"header_name": "x-user-id", "descriptor_key": "user"}}
                ]
            }
        ],
    }
    routes = [
        _route("health", {"path": "/healthz"}, {}),
        _route(
            "products", {"prefix": "/product"}, {"envoy.filters.http.local_ratelimit": per_user}
        ),
        _route("default", {"prefix": "/"}, {}),
    ]
    return _bootstrap(admin_port, port, backend_port, [jwt, rbac, limiter], routes, [])
