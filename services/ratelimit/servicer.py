"""``envoy.service.ratelimit.v3.RateLimitService``: protobuf in, the model, protobuf out.

Errors follow envoyproxy/ratelimit's messages with proper status codes: an empty
domain or descriptor list is INVALID_ARGUMENT, a failed counter store or a
missing config is UNAVAILABLE (Envoy's ``failure_mode_deny`` then decides). No
request, however malformed, takes the server down, and none floods its log: undecodable
bodies and bugs get at most one line per kind every few seconds (``LogThrottle``); the
metrics count every call.

The servicer runs on the threaded gRPC server's handler threads: it takes and returns
serialized bytes, and runs the service's coroutine with ``Inline`` (on the handler
thread unless the counter store must wait for I/O).
"""

import time
from typing import Any

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct

from services import envoy_api as api
from services.inline import Inline
from services.log_throttle import LogThrottle
from services.metrics import Metrics
from services.ratelimit.model import (
    UINT32_MAX,
    Code,
    DescriptorRequest,
    DescriptorStatus,
    LimitOverride,
    LimitRequest,
    LimitResult,
    RateLimit,
    Unit,
)
from services.ratelimit.service import InvalidRequestError, RateLimitService, UnavailableError

log = structlog.get_logger("mixerless.ratelimit")

SERVICE = "ratelimit"
OUTCOMES = ("ok", "over_limit", "invalid", "unavailable", "error")


def request_from_proto(message: Any) -> LimitRequest:
    """A ``RateLimitRequest`` as the model; raises ``InvalidRequestError`` on bad fields."""
    descriptors = []
    for index, descriptor in enumerate(message.descriptors):
        override = None
        if descriptor.HasField("limit"):
            unit = Unit.from_proto(descriptor.limit.unit)
            if unit is None:
                raise InvalidRequestError(
                    f"descriptor {index}: limit override has unknown unit {descriptor.limit.unit}"
                )
            override = LimitOverride(descriptor.limit.requests_per_unit, unit)
        addend = None
        if descriptor.HasField("hits_addend"):
            addend = descriptor.hits_addend.value
            if addend > UINT32_MAX:
                raise InvalidRequestError(
                    f"descriptor {index}: hits_addend {addend} is larger than {UINT32_MAX}"
                )
        entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
        descriptors.append(DescriptorRequest(entries, override, addend))
    return LimitRequest(message.domain, tuple(descriptors), message.hits_addend)


def _limit_proto(limit: RateLimit) -> Any:
    return api.RateLimitResponse.RateLimit(
        name=limit.name, requests_per_unit=limit.requests_per_unit, unit=limit.unit.proto
    )


def _status_proto(status: DescriptorStatus) -> Any:
    proto = api.RateLimitResponse.DescriptorStatus(
        code=status.code, limit_remaining=status.remaining
    )
    if status.limit is not None and not status.limit.unlimited:
        proto.current_limit.CopyFrom(_limit_proto(status.limit))
    if status.reset_seconds is not None:
        proto.duration_until_reset.CopyFrom(Duration(seconds=status.reset_seconds))
    return proto


def response_to_proto(result: LimitResult) -> Any:
    """The model's answer as a ``RateLimitResponse``."""
    response = api.RateLimitResponse(
        overall_code=result.overall,
        statuses=[_status_proto(status) for status in result.statuses],
        response_headers_to_add=[api.HeaderValue(key=k, value=v) for k, v in result.headers],
    )
    if result.metadata is not None:
        metadata = Struct()
        metadata.update(result.metadata)
        response.dynamic_metadata.CopyFrom(metadata)
    return response


class RateLimitServicer:
    """Envoy's RLS v3 endpoint over a ``RateLimitService``."""

    def __init__(
        self,
        service: RateLimitService,
        metrics: Metrics,
        inline: Inline,
        *,
        throttle: LogThrottle | None = None,
    ) -> None:
        self._service = service
        self._inline = inline
        self._calls = metrics.rpc_recorder(SERVICE, OUTCOMES)
        self._throttle = throttle or LogThrottle()

    def handler(self) -> grpc.GenericRpcHandler:
        """``ShouldRateLimit`` for a threaded server, bytes in and out."""
        return grpc.method_handlers_generic_handler(
            api.RATELIMIT_SERVICE_NAME,
            {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(self.should_rate_limit)},
        )

    def should_rate_limit(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        """One serialized ``RateLimitRequest`` in, its serialized ``RateLimitResponse`` out."""
        started = time.perf_counter()
        code: grpc.StatusCode | None = None
        message = ""
        domain = ""
        try:
            proto = api.RateLimitRequest.FromString(body)
            domain = proto.domain
            request = request_from_proto(proto)
            result = self._inline.run(
                lambda: self._service.should_rate_limit(request), context.time_remaining()
            )
            response = bytes(response_to_proto(result).SerializeToString())
            outcome = "over_limit" if result.overall is Code.OVER_LIMIT else "ok"
        except DecodeError:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, "the body is not a RateLimitRequest"
            outcome = "invalid"
            self._throttle.warning(
                "undecodable",
                log,
                "a ShouldRateLimit call whose body is not a RateLimitRequest: INVALID_ARGUMENT",
                bytes=len(body),
                peer=context.peer(),
            )
        except InvalidRequestError as exc:
            code, message, outcome = grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid"
        except UnavailableError as exc:
            code, message, outcome = grpc.StatusCode.UNAVAILABLE, str(exc), "unavailable"
        except TimeoutError:  # Envoy has given up on this call already
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the counter store took too long"
            outcome = "unavailable"
        except Exception as exc:  # a bug must cost one request, not the server
            self._throttle.exception("failed", log, "ShouldRateLimit failed", domain=domain)
            code, message, outcome = grpc.StatusCode.INTERNAL, f"internal error: {exc}", "error"
        self._calls.record(outcome, started)
        if code is not None:
            context.abort(code, message)
        return response
