"""``envoy.service.auth.v3.Authorization/Check``: protobuf in, the model, protobuf out.

Every answer is a ``CheckResponse``: allow (OK with header changes and dynamic
metadata) or deny (PERMISSION_DENIED / UNAUTHENTICATED with the HTTP status,
body and headers Envoy sends the client). A bug denies that one request; it never
becomes a gRPC error or takes the server down. A body that is not a CheckRequest at
all is INVALID_ARGUMENT (Envoy's ``failure_mode_allow`` then decides), and the server
goes on.

The servicer runs on the threaded gRPC server's handler threads: it takes and returns
serialized bytes, and runs the service's coroutine with ``Inline`` (on the handler
thread unless a step must wait for I/O).
"""

import time
from collections.abc import Mapping
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct

from services import envoy_api as api
from services.authz.answer import Denial, answer
from services.authz.model import RBAC_DENIED, CheckInput, Decision, HttpRequest, Peer, Reason
from services.authz.service import AuthzService
from services.inline import Inline
from services.log_throttle import LogThrottle
from services.metrics import Metrics

log = structlog.get_logger("mixerless.authz")

SERVICE = "authz"
OUTCOMES = ("allow", "deny", "unauthenticated", "error", "invalid")
_OK = 0
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16
_OVERWRITE = api.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def _headers(http: Any) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Request headers with lower-case names, repeated ones joined with ``,`` as Envoy
    joins them; and, from a raw header map, each value of the repeated ones."""
    sent = http.headers
    if sent:
        # Keys and lookups: a protobuf map's items() iterates in Python, keys in C. Envoy
        # sends names lower-cased already; anything else pays for lower-casing them.
        headers = {name: sent[name] for name in sent}
        names = "".join(headers)
        if names.lower() != names:
            headers = {name.lower(): value for name, value in headers.items()}
        return headers, {}
    # Sent instead when encode_raw_headers is on (gateways mixerless configures): every
    # request of a gateway comes this way, so the loop is written for speed. Names are
    # taken as sent and checked once at the end; values sent twice are rare and gathered
    # apart. Envoy sets one of ``value`` and ``raw_value`` (the proto says only one may be).
    first: dict[str, str] = {}
    again: dict[str, list[str]] | None = None
    for header in http.header_map.headers:
        raw = header.raw_value
        value = raw.decode("utf-8", "replace") if raw else header.value
        name = header.key
        if name in first:
            if again is None:
                again = {}
            again.setdefault(name, [first[name]]).append(value)
        else:
            first[name] = value
    names = "".join(first)
    if names.lower() != names:  # not from Envoy, which sends lower-case names
        return _header_list(http.header_map.headers)
    if again is None:
        return first, {}
    for name, found in again.items():
        first[name] = ",".join(found)
    return first, {name: tuple(found) for name, found in again.items()}


def _header_list(sent: Any) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """``_headers`` for a raw header list whose names need lower-casing."""
    values: dict[str, list[str]] = {}
    for header in sent:
        raw = header.raw_value
        value = raw.decode("utf-8", "replace") if raw else header.value
        values.setdefault(header.key.lower(), []).append(value)
    joined = {name: ",".join(found) for name, found in values.items()}
    repeated = {name: tuple(found) for name, found in values.items() if len(found) > 1}
    return joined, repeated


def check_input(request: Any) -> CheckInput:
    """A ``CheckRequest`` as the model."""
    attributes = request.attributes
    http = attributes.request.http
    source = attributes.source
    destination = attributes.destination
    body = http.raw_body or http.body.encode("utf-8", "surrogateescape")
    headers, repeated = _headers(http)
    extensions = attributes.context_extensions
    return CheckInput(
        request=HttpRequest(
            method=http.method or "GET",
            host=http.host,
            path=http.path or "/",
            scheme=http.scheme or "http",
            protocol=http.protocol,
            headers=headers,
            repeated=repeated,
            body=body,
            body_truncated=bool(http.size) and http.size > len(body),
        ),
        source=Peer(
            source.address.socket_address.address,
            source.address.socket_address.port_value,
            source.principal,
        ),
        destination=Peer(
            destination.address.socket_address.address,
            destination.address.socket_address.port_value,
            destination.principal,
        ),
        sni=attributes.tls_session.sni,
        context={key: extensions[key] for key in extensions},
        http=attributes.request.HasField("http"),
        original=request,
    )


def _options(headers: tuple[tuple[str, str], ...]) -> list[Any]:
    return [
        api.HeaderValueOption(header=api.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
        for k, v in headers
    ]


def _struct_bytes(values: Mapping[str, Any]) -> bytes:
    """``values`` as a serialized ``google.protobuf.Struct``."""
    message = Struct()
    message.update(values)
    return bytes(message.SerializeToString())


def response_for(decision: Decision) -> Any:
    """The ``CheckResponse`` for a decision."""
    response = api.CheckResponse()
    if decision.allowed:
        response.status.code = _OK
        ok = response.ok_response
        ok.headers.extend(_options(decision.upstream_headers))
        ok.headers_to_remove.extend(decision.upstream_headers_to_remove)
        ok.response_headers_to_add.extend(_options(decision.downstream_headers))
        for key, value in decision.query_parameters_to_set:
            ok.query_parameters_to_set.add(key=key, value=value)
        ok.query_parameters_to_remove.extend(decision.query_parameters_to_remove)
    else:
        response.status.code = _UNAUTHENTICATED if decision.status == 401 else _PERMISSION_DENIED
        denied = response.denied_response
        denied.status.code = decision.status
        denied.body = decision.body
        denied.headers.extend(_options(decision.downstream_headers))
    metadata = decision.dynamic_metadata
    if metadata is not None:
        # Encoded once per metadata object (one per verified token) and kept on it; an
        # empty one encodes to b"" and leaves the field unset.
        encoded = metadata.encoded(_struct_bytes)
        if encoded:
            response.dynamic_metadata.MergeFromString(encoded)
    return response


def encode(decision: Decision) -> bytes:
    """The serialized ``CheckResponse`` of ``decision``.

    Encoded once per Decision object and kept on it (``Decision.encoded``): a decision
    served from the cache is answered with the same bytes. A cached decision with a
    quota's headers appended is its base's bytes followed by a ``CheckResponse`` holding
    only those headers: protobuf merges a message's repeated fields across concatenated
    encodings, so Envoy reads one response with every header, in order.
    """
    base = decision.base
    if base is None:
        return _encoded(decision)
    extra = api.CheckResponse()
    extra.ok_response.response_headers_to_add.extend(_options(decision.appended))
    return _encoded(base) + bytes(extra.SerializeToString())


def _encoded(decision: Decision) -> bytes:
    memo = decision.encoded
    data = memo.value
    if data is None:
        data = memo.value = bytes(response_for(decision).SerializeToString())
    return data


_INTERNAL_ERROR = answer(Denial(403, RBAC_DENIED, Reason("error", detail="internal error")))


class AuthorizationServicer:
    """Envoy's ext_authz v3 endpoint over an ``AuthzService``."""

    def __init__(
        self,
        service: AuthzService,
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
        """``Check`` for a threaded server, bytes in and out."""
        return grpc.method_handlers_generic_handler(
            api.AUTHORIZATION_SERVICE_NAME,
            {"Check": grpc.unary_unary_rpc_method_handler(self.check)},
        )

    def check(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        """One serialized ``CheckRequest`` in, its serialized ``CheckResponse`` out."""
        started = time.perf_counter()
        try:
            request = api.CheckRequest.FromString(body)
        except DecodeError:
            self._calls.record("invalid", started)
            self._throttle.warning(
                "undecodable",
                log,
                "a Check call whose body is not a CheckRequest: INVALID_ARGUMENT",
                bytes=len(body),
                peer=context.peer(),
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the body is not a CheckRequest")
        try:
            check = check_input(request)
            decision = self._inline.run(
                lambda: self._service.check(check), context.time_remaining()
            )
            if decision.allowed:
                outcome = "allow"
            else:
                outcome = "unauthenticated" if decision.status == 401 else "deny"
        except TimeoutError:  # Envoy has given up on this call already
            self._throttle.warning("timeout", log, "Check ran out of time waiting for I/O; denying")
            decision, outcome = _INTERNAL_ERROR, "error"
        except Exception:  # fail closed: a bug denies this request, and is logged
            self._throttle.exception("failed", log, "Check failed; denying")
            decision, outcome = _INTERNAL_ERROR, "error"
        self._calls.record(outcome, started)
        return encode(decision)
