"""The one place that imports Envoy's generated protobuf code (from ``xds-protos``).

Every other module imports these names from here, so a change of proto source
(vendored protos, a newer xds-protos layout) touches one file.
"""

from envoy.config.core.v3 import base_pb2 as core_base
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_ratelimit
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
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
    "AUTHORIZATION_SERVICE_NAME",
    "HTTP_STATUS_CODES",
    "RATELIMIT_SERVICE_NAME",
    "AttributeContext",
    "AuthorizationServicer",
    "AuthorizationStub",
    "CheckRequest",
    "CheckResponse",
    "DeniedHttpResponse",
    "HeaderValue",
    "HeaderValueOption",
    "OkHttpResponse",
    "RateLimitDescriptor",
    "RateLimitRequest",
    "RateLimitResponse",
    "RateLimitServiceServicer",
    "RateLimitServiceStub",
    "add_AuthorizationServicer_to_server",
    "add_RateLimitServiceServicer_to_server",
]
