"""The one place that imports Envoy's generated protobuf code (from ``xds-protos``).

Every other module imports these names from here, so a change of proto source
(vendored protos, a newer xds-protos layout) touches one file.
"""

from envoy.config.core.v3 import base_pb2 as core_base
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_ratelimit
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

RateLimitRequest = rls_pb2.RateLimitRequest
RateLimitResponse = rls_pb2.RateLimitResponse
RateLimitDescriptor = common_ratelimit.RateLimitDescriptor
HeaderValue = core_base.HeaderValue
RateLimitServiceServicer = rls_pb2_grpc.RateLimitServiceServicer
RateLimitServiceStub = rls_pb2_grpc.RateLimitServiceStub
add_RateLimitServiceServicer_to_server = rls_pb2_grpc.add_RateLimitServiceServicer_to_server

RATELIMIT_SERVICE_NAME: str = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name

__all__ = [
    "RATELIMIT_SERVICE_NAME",
    "HeaderValue",
    "RateLimitDescriptor",
    "RateLimitRequest",
    "RateLimitResponse",
    "RateLimitServiceServicer",
    "RateLimitServiceStub",
    "add_RateLimitServiceServicer_to_server",
]
