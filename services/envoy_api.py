"""The one place that imports Envoy's generated protobuf code (from ``xds-protos``).

Every other module imports these names from here, so a change of proto source
(vendored protos, a newer xds-protos layout) touches one file.
"""

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2 as core_base
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_ratelimit

# Types that xDS resources carry in typed_config (google.protobuf.Any): importing them
# registers their descriptors, so JSON with "@type" parses and Envoy-bound Anys pack.
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc, discovery_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import http_status_pb2

RateLimitRequest = rls_pb2.RateLimitRequest
RateLimitResponse = rls_pb2.RateLimitResponse
RateLimitDescriptor = common_ratelimit.RateLimitDescriptor
HeaderValue = core_base.HeaderValue
RateLimitServiceServicer = rls_pb2_grpc.RateLimitServiceServicer
RateLimitServiceStub = rls_pb2_grpc.RateLimitServiceStub
add_RateLimitServiceServicer_to_server = rls_pb2_grpc.add_RateLimitServiceServicer_to_server

RATELIMIT_SERVICE_NAME: str = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name

Cluster = cluster_pb2.Cluster
ClusterLoadAssignment = endpoint_pb2.ClusterLoadAssignment
Listener = listener_pb2.Listener
RouteConfiguration = route_pb2.RouteConfiguration
RouteRateLimit = route_components_pb2.RateLimit

DiscoveryRequest = discovery_pb2.DiscoveryRequest
DiscoveryResponse = discovery_pb2.DiscoveryResponse
DeltaDiscoveryRequest = discovery_pb2.DeltaDiscoveryRequest
DeltaDiscoveryResponse = discovery_pb2.DeltaDiscoveryResponse
Resource = discovery_pb2.Resource
AggregatedDiscoveryServiceServicer = ads_pb2_grpc.AggregatedDiscoveryServiceServicer
AggregatedDiscoveryServiceStub = ads_pb2_grpc.AggregatedDiscoveryServiceStub
add_AggregatedDiscoveryServiceServicer_to_server = (
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server
)

AGGREGATED_DISCOVERY_SERVICE_NAME: str = ads_pb2.DESCRIPTOR.services_by_name[
    "AggregatedDiscoveryService"
].full_name

CheckRequest = external_auth_pb2.CheckRequest
CheckResponse = external_auth_pb2.CheckResponse
OkHttpResponse = external_auth_pb2.OkHttpResponse
DeniedHttpResponse = external_auth_pb2.DeniedHttpResponse
AttributeContext = attribute_context_pb2.AttributeContext
HeaderValueOption = core_base.HeaderValueOption
AuthorizationServicer = external_auth_pb2_grpc.AuthorizationServicer
AuthorizationStub = external_auth_pb2_grpc.AuthorizationStub
add_AuthorizationServicer_to_server = external_auth_pb2_grpc.add_AuthorizationServicer_to_server

AUTHORIZATION_SERVICE_NAME: str = external_auth_pb2.DESCRIPTOR.services_by_name[
    "Authorization"
].full_name
# The HTTP statuses of Envoy's StatusCode enum, without 0 ("Empty"): the values an
# HttpStatus may carry (Envoy's validation rejects 0 and undefined codes).
HTTP_STATUS_CODES: frozenset[int] = frozenset(
    code for code in http_status_pb2.StatusCode.values() if code
)

__all__ = [
    "AGGREGATED_DISCOVERY_SERVICE_NAME",
    "AUTHORIZATION_SERVICE_NAME",
    "HTTP_STATUS_CODES",
    "RATELIMIT_SERVICE_NAME",
    "AggregatedDiscoveryServiceServicer",
    "AggregatedDiscoveryServiceStub",
    "AttributeContext",
    "AuthorizationServicer",
    "AuthorizationStub",
    "CheckRequest",
    "CheckResponse",
    "Cluster",
    "ClusterLoadAssignment",
    "DeltaDiscoveryRequest",
    "DeltaDiscoveryResponse",
    "DeniedHttpResponse",
    "DiscoveryRequest",
    "DiscoveryResponse",
    "HeaderValue",
    "HeaderValueOption",
    "Listener",
    "OkHttpResponse",
    "RateLimitDescriptor",
    "RateLimitRequest",
    "RateLimitResponse",
    "RateLimitServiceServicer",
    "RateLimitServiceStub",
    "Resource",
    "RouteConfiguration",
    "RouteRateLimit",
    "add_AggregatedDiscoveryServiceServicer_to_server",
    "add_AuthorizationServicer_to_server",
    "add_RateLimitServiceServicer_to_server",
]
