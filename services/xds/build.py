"""Gateway policies -> the Envoy resources of one gateway, as Envoy's JSON: pure, no I/O.

Per gateway listener: a Listener whose HTTP connection manager runs
``ext_authz`` (to mixerless authz), ``ratelimit`` (to mixerless ratelimit), then the
router, with the path normalization and trusted-proxy settings Istio gives its
gateways; a RouteConfiguration with every route, its rate limit actions and the
authz context (namespace, labels, gateway) the authz service selects policies by.
Per route: a Cluster, with its ClusterLoadAssignment when the backend is given by IP;
none for a ``directResponse`` route, which Envoy answers itself (``direct_response``,
with the same ext_authz per-route settings as any route). Such a route carries no rate
limit actions: Envoy's ratelimit filter sends no descriptors for a route without a
RouteAction, wherever the actions are put (RouteAction, virtual host, or
``RateLimitPerRoute.rate_limits``, measured with Envoy 1.40), so loading refuses rate
limits aimed at one (``kinds.link``, ``gateway.py``) and policies for every route skip it.

``own_resources`` writes everything but the two clusters that reach mixerless itself
(``mixerless_resources``), whose addresses are serving settings rather than policy;
``gateway_config.py`` compiles the first at policy load and adds the second at publish.
"""

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.policy.re2 import quote_meta
from services.xds.direct_response import DirectResponse
from services.xds.gateway import Endpoint, Gateway, Route
from services.xds.ratelimit_policy import RateLimitPolicy, counted_in_check, route_actions
from services.xds.route_match import RouteMatch
from services.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
)

AUTHZ_CLUSTER = "mixerless_authz"
RATELIMIT_CLUSTER = "mixerless_ratelimit"
_ADS = {"ads": {}, "resource_api_version": "V3"}
_T = "type.googleapis.com/"
HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE = _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
RATELIMIT = _T + "envoy.extensions.filters.http.ratelimit.v3.RateLimit"
ROUTER = _T + "envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_TLS = _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def _endpoint_tuple(service: str, given: Endpoint | Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    endpoints = (given,) if isinstance(given, Endpoint) else tuple(given)
    if not endpoints:
        raise ValueError(f"Services: {service} needs at least one endpoint")
    return endpoints


@dataclass(frozen=True, slots=True, init=False)
class Services:
    """Where a gateway's Envoys reach mixerless when the Gateway does not say.

    One endpoint per service (``Services(Endpoint(...), Endpoint(...))``), or one per
    worker process (``Services((e0, e1, ...), (e0, e1, ...))``): each is an endpoint of
    the generated cluster, so Envoy spreads requests over the workers instead of sending
    all of one connection's requests to whichever process accepted it. Kept as tuples,
    in the order given.
    """

    authz: tuple[Endpoint, ...]
    ratelimit: tuple[Endpoint, ...]

    def __init__(
        self, authz: Endpoint | Sequence[Endpoint], ratelimit: Endpoint | Sequence[Endpoint]
    ) -> None:
        object.__setattr__(self, "authz", _endpoint_tuple("authz", authz))
        object.__setattr__(self, "ratelimit", _endpoint_tuple("ratelimit", ratelimit))


@dataclass(frozen=True, slots=True)
class RequestBody:
    """``with_request_body`` of the ext_authz filter."""

    max_request_bytes: int
    allow_partial_message: bool
    pack_as_bytes: bool


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """How a gateway's HTTP connection manager and ext_authz filter treat requests.

    Istio derives these from meshConfig (path normalization, trusted proxies, the
    request body extension providers want); the catalog does the same for us.
    """

    normalize_path: bool = True
    merge_slashes: bool = False
    unescape_slashes: bool = False
    xff_num_trusted_hops: int = 0
    request_body: RequestBody | None = None


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _endpoints(name: str, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": e.host, "port_value": e.port}}
                        }
                    }
                    for e in endpoints
                ]
            }
        ],
    }


def _http2() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": {
                "http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                }
            },
        }
    }


def _cluster(
    name: str, endpoints: Sequence[Endpoint], *, http2: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A cluster, and its ClusterLoadAssignment when it is served by EDS (IP endpoints)."""
    cluster: dict[str, Any] = {"name": name, "connect_timeout": "1s"}
    assignment = None
    if all(e.is_ip for e in endpoints):
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {"eds_config": _ADS}
        assignment = _endpoints(name, endpoints)
    else:  # host names: resolved by Envoy
        cluster["type"] = "STRICT_DNS"
        cluster["load_assignment"] = _endpoints(name, endpoints)
    if http2:
        cluster["typed_extension_protocol_options"] = _http2()
    return cluster, assignment


def _header_matcher(name: str, kind: str, value: str, invert: bool) -> dict[str, Any]:
    matcher: dict[str, Any] = {"name": name}
    if kind == "present":
        matcher["present_match"] = value == "true"
    elif kind == "regex":
        matcher["string_match"] = {"safe_regex": {"regex": value}}
    else:
        matcher["string_match"] = {kind: value}
    if invert:
        matcher["invert_match"] = True
    return matcher


def _route_match(match: RouteMatch) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if match.exact is not None:
        found["path"] = match.exact
    elif match.regex is not None:
        found["safe_regex"] = {"regex": match.regex}
    else:
        found["prefix"] = match.prefix or "/"
    headers = [_header_matcher(h.name, h.kind, h.value, h.invert) for h in match.headers]
    if match.methods:
        regex = "^(?:" + "|".join(quote_meta(m) for m in match.methods) + ")$"
        headers.append({"name": ":method", "string_match": {"safe_regex": {"regex": regex}}})
    if headers:
        found["headers"] = headers
    return found


def _direct_response(response: DirectResponse) -> dict[str, Any]:
    """Envoy's ``direct_response`` (DirectResponseAction) for a route, as JSON."""
    found: dict[str, Any] = {"status": response.status}
    if isinstance(response.body, str):
        found["body"] = {"inline_string": response.body}
    elif isinstance(response.body, bytes):  # proto3 JSON carries bytes as base64
        found["body"] = {"inline_bytes": base64.b64encode(response.body).decode("ascii")}
    return found


def _route_action(gateway: Gateway, route: Route) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": f"{gateway.name}/{route.name}"}
    if route.timeout is not None:
        action["timeout"] = _seconds(route.timeout)
    if route.retries is not None:
        retry: dict[str, Any] = {
            "retry_on": route.retries.retry_on,
            "num_retries": route.retries.attempts,
        }
        if route.retries.per_try_timeout is not None:
            retry["per_try_timeout"] = _seconds(route.retries.per_try_timeout)
        action["retry_policy"] = retry
    return action


def _authz_per_route(gateway: Gateway, route: Route) -> dict[str, Any]:
    per_route: dict[str, Any] = {"@type": EXT_AUTHZ_PER_ROUTE}
    if route.authz:
        extensions = {
            "namespace": gateway.meta.namespace,
            "gateway": gateway.name,
            "labels": gateway.labels_text,  # "" says "no labels", not "use the default"
            "route": route.name,  # whose quotas the Check counts (services/authz/quota.py)
        }
        per_route["check_settings"] = {"context_extensions": extensions}
    else:
        per_route["disabled"] = True
    return per_route


def _route(gateway: Gateway, route: Route, policies: Sequence[RateLimitPolicy]) -> dict[str, Any]:
    built: dict[str, Any] = {"name": route.name, "match": _route_match(route.match)}
    if route.direct_response is not None:  # no RouteAction, so no rate limits (module doc)
        built["direct_response"] = _direct_response(route.direct_response)
    else:
        built["route"] = _route_action(gateway, route)
        # A route that Checks counts its RateLimitPolicies there (one hop): Envoy gets
        # no actions for them, so nothing is counted twice. Hand-written ones stay.
        two_hops = (
            []
            if counted_in_check(gateway, route)
            else [route_actions(p) for p in policies if p.covers(route.name)]
        )
        rate_limits = two_hops + [dict(entry) for entry in route.rate_limits]
        if rate_limits:
            built["route"]["rate_limits"] = rate_limits
    built["typed_per_filter_config"] = {
        "envoy.filters.http.ext_authz": _authz_per_route(gateway, route)
    }
    return built


def _request_body(settings: ListenerSettings) -> dict[str, Any]:
    body = settings.request_body
    if body is None:
        return {}
    return {
        "with_request_body": {
            "max_request_bytes": body.max_request_bytes,
            "allow_partial_message": body.allow_partial_message,
            "pack_as_bytes": body.pack_as_bytes,
        }
    }


def _filters(gateway: Gateway, settings: ListenerSettings) -> list[dict[str, Any]]:
    authz, ratelimit = gateway.authz, gateway.rate_limit
    return [
        {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": EXT_AUTHZ,
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": AUTHZ_CLUSTER},
                    "timeout": _seconds(authz.timeout),
                },
                "failure_mode_allow": authz.fail_open,
                "include_peer_certificate": True,
                "include_tls_session": True,  # connection.sni conditions
                "encode_raw_headers": True,  # repeated headers arrive value by value
                **_request_body(settings),
            },
        },
        {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": RATELIMIT,
                "domain": gateway.domain,
                "timeout": _seconds(ratelimit.timeout),
                "failure_mode_deny": not ratelimit.fail_open,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limit_service": {
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}},
                },
            },
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
    ]


def _listener(gateway: Gateway, listener: Any, settings: ListenerSettings) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": f"{gateway.name}_{listener.name}",
        "rds": {"route_config_name": f"{gateway.name}/{listener.name}", "config_source": _ADS},
        # As Istio configures a gateway: the client address from XFF past trusted proxies.
        "use_remote_address": True,
        "xff_num_trusted_hops": settings.xff_num_trusted_hops,
        "normalize_path": settings.normalize_path,
        "merge_slashes": settings.merge_slashes,
        "http_filters": _filters(gateway, settings),
    }
    if settings.unescape_slashes:
        hcm["path_with_escaped_slashes_action"] = "UNESCAPE_AND_FORWARD"
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if listener.certificate_file:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": DOWNSTREAM_TLS,
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": listener.certificate_file},
                            "private_key": {"filename": listener.private_key_file},
                        }
                    ]
                },
            },
        }
    return {
        "name": f"{gateway.name}/{listener.name}",
        "address": {"socket_address": {"address": listener.address, "port_value": listener.port}},
        "filter_chains": [chain],
    }


def own_resources(
    gateway: Gateway, policies: Sequence[RateLimitPolicy], settings: ListenerSettings
) -> dict[str, dict[str, dict[str, Any]]]:
    """The gateway's resources as Envoy JSON, but for the clusters of mixerless itself."""
    clusters: dict[str, dict[str, Any]] = {}
    assignments: dict[str, dict[str, Any]] = {}
    for route in gateway.routes:
        if route.direct_response is not None:
            continue  # answered by Envoy: no cluster, no endpoints
        name = f"{gateway.name}/{route.name}"
        clusters[name], assignment = _cluster(name, route.endpoints, http2=route.http2)
        if assignment is not None:
            assignments[name] = assignment
    listeners = {}
    routes = {}
    route_entries = [_route(gateway, route, policies) for route in gateway.routes]
    for listener in gateway.listeners:
        built = _listener(gateway, listener, settings)
        listeners[built["name"]] = built
        routes[built["name"]] = {
            "name": built["name"],
            "virtual_hosts": [
                {"name": listener.name, "domains": list(listener.hosts), "routes": route_entries}
            ],
        }
    return {CLUSTER: clusters, ENDPOINT: assignments, LISTENER: listeners, ROUTE: routes}


def mixerless_resources(
    gateway: Gateway, services: Services
) -> dict[str, dict[str, dict[str, Any]]]:
    """The clusters through which the gateway reaches mixerless's authz and ratelimit:
    the Gateway's own address for a service, else every endpoint ``services`` lists."""
    clusters: dict[str, dict[str, Any]] = {}
    assignments: dict[str, dict[str, Any]] = {}
    for name, address, ours in (
        (AUTHZ_CLUSTER, gateway.authz.address, services.authz),
        (RATELIMIT_CLUSTER, gateway.rate_limit.address, services.ratelimit),
    ):
        endpoints = (address,) if address is not None else ours
        clusters[name], assignment = _cluster(name, endpoints, http2=True)
        if assignment is not None:
            assignments[name] = assignment
    return {CLUSTER: clusters, ENDPOINT: assignments}
