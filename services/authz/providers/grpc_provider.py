"""``envoyExtAuthzGrpc``: ask an ``envoy.service.auth.v3.Authorization`` server.

The provider gets the gateway's own ``CheckRequest`` (``CheckInput.original``), as Envoy
would have built it for the provider, with one difference Istio's config makes: the
body. Envoy puts a body in the request only when ``with_request_body`` is configured
(``includeRequestBodyInCheck``), so without it ``body``, ``raw_body`` and the
``x-envoy-auth-partial-body`` header are cleared; with it the body is cut to
``maxRequestBytes``, goes to ``raw_body`` with ``packAsBytes`` (else to ``body``), and the
partial-body header says whether it was cut (``check_request_utils.cc``). Without an
original request (a ``CheckInput`` built by hand) one is made from the ``CheckInput``.

The answer is read as Envoy's gRPC client does (``ext_authz_grpc_impl.cc``):

* status OK is an allow. ``ok_response.headers`` change the upstream request: ``append:
  true`` joins the value to an existing header with ``,`` (nothing if absent), ``append:
  false`` sets it; without ``append``, ``ADD_IF_ABSENT`` and ``OVERWRITE_IF_EXISTS`` do
  what they say and the rest set (the API documents ``append`` as false by default
  there). Since ``ProviderDecision`` sets headers, the resulting values are worked out
  here against the request's headers. ``headers_to_remove`` (never pseudo-headers or
  ``host``), ``response_headers_to_add``, the query parameter changes and the dynamic
  metadata (``ok_response.dynamic_metadata``, deprecated, wins over the outer one) follow.
* any other status is a denial: ``denied_response`` status (403 when absent, 0 or not an
  Envoy ``StatusCode``), body and headers.
* ``error_response`` (newer API) is an error: ``failOpen`` applies; otherwise its status
  (else ``statusOnError``), body and headers.
* a failed call (UNAVAILABLE, DEADLINE_EXCEEDED, anything) is an error, and so is an
  answer that is not a ``CheckResponse`` at all.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from services import envoy_api as api
from services.authz.model import CheckInput, Header
from services.authz.providers.client import (
    PARTIAL_BODY_HEADER,
    PAYLOAD_TOO_LARGE,
    CheckBody,
    FailureLog,
    ProviderDecision,
    check_body,
    error_decision,
    removable,
)
from services.authz.providers.config import GrpcProvider, RequestBody
from services.inline import require_loop

_Action = api.HeaderValueOption.HeaderAppendAction
DEFAULT_DENIED_STATUS = 403
_GRPC_OK = 0  # google.rpc.Code OK in CheckResponse.status

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 0),
    # after a failed connection, try again soon: calls fail fast meanwhile (UNAVAILABLE)
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
)


class GrpcProviderClient:
    """One gRPC channel to one provider, opened on first use."""

    def __init__(
        self, provider: GrpcProvider, *, options: Sequence[tuple[str, int]] = CHANNEL_OPTIONS
    ) -> None:
        self.provider = provider
        self._options = list(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._failures = FailureLog(provider)

    def _check_stub(self) -> Any:
        """``Check``, answering the provider's bytes: they are decoded here, so that bytes
        that are no ``CheckResponse`` are a failed call like any other (grpc would log a
        traceback and hand over None)."""
        if self._stub is None:  # on the running loop: grpc.aio channels belong to one
            self._channel = grpc.aio.insecure_channel(self.provider.address, options=self._options)
            self._stub = self._channel.unary_unary(
                f"/{api.AUTHORIZATION_SERVICE_NAME}/Check",
                request_serializer=api.CheckRequest.SerializeToString,
                response_deserializer=None,
            )
        return self._stub

    async def check(self, check: CheckInput) -> ProviderDecision:
        require_loop("a CUSTOM provider call")
        body = check_body(self.provider, check.request)
        if body.too_large:
            return PAYLOAD_TOO_LARGE
        request = provider_request(check, self.provider.include_request_body_in_check, body)
        try:
            answer = await self._check_stub()(request, timeout=self.provider.timeout or None)
            response = api.CheckResponse.FromString(answer)
        except DecodeError:
            self._failures.failed("the provider answered bytes that are not a CheckResponse")
            return error_decision(self.provider)
        except grpc.aio.AioRpcError as exc:
            self._failures.failed(f"{exc.code().name}: {exc.details()}")
            return error_decision(self.provider)
        except Exception as exc:  # anything else is a failed call too, as for Envoy
            self._failures.failed(repr(exc))
            return error_decision(self.provider)
        return self.decision(response, check.request.headers)

    def decision(self, response: Any, request_headers: Mapping[str, str]) -> ProviderDecision:
        """A ``CheckResponse`` read as Envoy's gRPC ext_authz client reads it."""
        kind = response.WhichOneof("http_response")
        if response.status.code == _GRPC_OK:
            return self._allowed(response, request_headers)
        if kind == "error_response":
            self._failures.failed("the provider answered with error_response")
            if self.provider.fail_open:
                return ProviderDecision(True, error=True)
            error = response.error_response
            status = error.status.code
            return ProviderDecision(
                False,
                status if status in api.HTTP_STATUS_CODES else self.provider.status_on_error,
                error.body,
                downstream_headers=_pairs(error.headers),
                error=True,
            )
        if kind != "denied_response":
            return ProviderDecision(False, DEFAULT_DENIED_STATUS)
        denied = response.denied_response
        status = denied.status.code
        return ProviderDecision(
            False,
            status if status in api.HTTP_STATUS_CODES else DEFAULT_DENIED_STATUS,
            denied.body,
            downstream_headers=_pairs(denied.headers),
        )

    def _allowed(self, response: Any, request_headers: Mapping[str, str]) -> ProviderDecision:
        ok = response.ok_response
        upstream, remove = _request_mutations(ok.headers, ok.headers_to_remove, request_headers)
        metadata = ok.dynamic_metadata if ok.HasField("dynamic_metadata") else None
        if metadata is None and response.HasField("dynamic_metadata"):
            metadata = response.dynamic_metadata
        return ProviderDecision(
            True,
            upstream_headers=upstream,
            upstream_headers_to_remove=remove,
            downstream_headers=_pairs(ok.response_headers_to_add),
            query_parameters_to_set=tuple((q.key, q.value) for q in ok.query_parameters_to_set),
            query_parameters_to_remove=tuple(ok.query_parameters_to_remove),
            dynamic_metadata=json_format.MessageToDict(metadata) if metadata else None,
        )

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


def provider_request(check: CheckInput, settings: RequestBody | None, body: CheckBody) -> Any:
    """The ``CheckRequest`` to send: the original one, with the body as the provider wants it."""
    request = api.CheckRequest()
    if isinstance(check.original, api.CheckRequest):
        request.CopyFrom(check.original)
    else:
        _fill_from_input(request, check)
    http = request.attributes.request.http
    if http.path != check.request.path:  # the path as normalized for policies
        http.path = check.request.path
        if ":path" in http.headers:
            http.headers[":path"] = check.request.path
    http.ClearField("body")
    http.ClearField("raw_body")
    http.headers.pop(PARTIAL_BODY_HEADER, None)
    raw_headers = http.header_map.headers
    for index in reversed(range(len(raw_headers))):
        if raw_headers[index].key.lower() == PARTIAL_BODY_HEADER:
            del raw_headers[index]
    if settings is None or body.partial is None:
        return request
    if settings.pack_as_bytes:
        http.raw_body = body.data
    else:
        http.body = body.data.decode("utf-8", errors="replace")
    if len(raw_headers):  # the gateway sends headers as raw bytes (encode_raw_headers)
        raw_headers.add(key=PARTIAL_BODY_HEADER, raw_value=body.partial.encode())
    else:
        http.headers[PARTIAL_BODY_HEADER] = body.partial
    return request


def _fill_from_input(request: Any, check: CheckInput) -> None:
    attributes = request.attributes
    for peer, data in (
        (attributes.source, check.source),
        (attributes.destination, check.destination),
    ):
        if data.address:
            peer.address.socket_address.address = data.address
            peer.address.socket_address.port_value = data.port
        peer.principal = data.principal
    source = check.request
    http = attributes.request.http
    http.method = source.method
    http.host = source.host
    http.path = source.path
    http.scheme = source.scheme
    http.protocol = source.protocol
    http.headers.update({":authority": source.host, ":method": source.method, ":path": source.path})
    http.headers.update(source.headers)
    attributes.context_extensions.update(check.context)
    if check.sni:
        attributes.tls_session.sni = check.sni


def _value(header: Any) -> str:
    value: str = header.value or header.raw_value.decode("utf-8", errors="replace")
    return value


def _pairs(options: Iterable[Any]) -> tuple[Header, ...]:
    return tuple((option.header.key.lower(), _value(option.header)) for option in options)


def _request_mutations(
    options: Iterable[Any], to_remove: Iterable[str], original: Mapping[str, str]
) -> tuple[tuple[Header, ...], tuple[str, ...]]:
    """The upstream headers to set and remove, after applying ``options`` in order."""
    changed: dict[str, str] = {}
    for option in options:
        name = option.header.key.lower()
        value = _value(option.header)
        existing = changed.get(name, original.get(name))
        if option.HasField("append"):
            if not option.append.value:
                changed[name] = value
            elif existing is not None:
                changed[name] = f"{existing},{value}"
        elif option.append_action == _Action.ADD_IF_ABSENT:
            if existing is None:
                changed[name] = value
        elif option.append_action == _Action.OVERWRITE_IF_EXISTS:
            if existing is not None:
                changed[name] = value
        else:
            changed[name] = value
    removed = tuple(dict.fromkeys(n.lower() for n in to_remove if removable(n.lower())))
    for name in removed:
        changed.pop(name, None)
    return tuple(changed.items()), removed
