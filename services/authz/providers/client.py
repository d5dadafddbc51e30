"""What a provider answered, with Envoy's ext_authz filter rules already applied.

Both clients share the parts of Envoy's filter that do not depend on the protocol:

* **Errors** (cannot connect, timeout, a gRPC error, an HTTP 5xx): with ``failOpen`` the
  request goes on (``allowed``, ``error`` set); without it the client gets
  ``statusOnError`` (default 403) with an empty body (``ext_authz.cc``, ``CheckStatus::Error``).
* **The request body** (``includeRequestBodyInCheck``): Envoy buffers at most
  ``maxRequestBytes``. A larger body is refused with ``413 Payload Too Large`` before the
  provider is asked, even with ``failOpen``; with ``allowPartialMessage`` the first
  ``maxRequestBytes`` go to the provider, with ``x-envoy-auth-partial-body: true``
  (``check_request_utils.cc``; the header is sent, ``true`` or ``false``, whenever a body is).

mixerless sees the body its own gateway buffered for it (``HttpRequest.body``;
``body_truncated`` when that gateway cut it short). A cut body counts as larger than any
provider's limit, so the gateway's ext_authz ``with_request_body.max_request_bytes`` should
be at least the largest ``maxRequestBytes`` of the providers.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from services.authz.model import CheckInput, Header, HttpRequest
from services.authz.providers.config import Provider

log = structlog.get_logger("mixerless.authz.providers")

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_ERROR_LOG_INTERVAL = 10.0  # seconds between two logged failures of one provider


@dataclass(frozen=True, slots=True)
class ProviderDecision:
    """A provider's verdict on one request, as Envoy's ext_authz filter would enforce it.

    * allowed: ``upstream_headers`` are set on the request (each replaces any header of
      that name), then ``upstream_headers_to_remove`` are removed; ``downstream_headers``
      are added to the response the client gets;
    * denied: the client gets ``status``, ``body`` and ``downstream_headers``;
    * ``error``: the provider could not be asked or failed (5xx); ``allowed`` then says
      what ``failOpen`` made of it.

    The gRPC API can also change the query string and emit dynamic metadata; those are
    carried in the last three fields.
    """

    allowed: bool
    status: int = 200
    body: str = ""
    upstream_headers: tuple[Header, ...] = ()
    upstream_headers_to_remove: tuple[str, ...] = ()
    downstream_headers: tuple[Header, ...] = ()
    error: bool = False
    query_parameters_to_set: tuple[Header, ...] = ()
    query_parameters_to_remove: tuple[str, ...] = ()
    dynamic_metadata: Mapping[str, Any] | None = None


PAYLOAD_TOO_LARGE = ProviderDecision(False, 413, "Payload Too Large")
"""What Envoy answers when a body over ``maxRequestBytes`` may not be cut short."""


class AuthzProviderClient(Protocol):
    """Protocol: asks one extension provider about requests."""

    async def check(self, check: CheckInput) -> ProviderDecision:
        """The provider's decision; never raises for provider trouble (that is ``error``)."""
        ...

    async def close(self) -> None:
        """Release connections; the client may not be used afterwards."""
        ...


def error_decision(provider: Provider) -> ProviderDecision:
    """Envoy's answer when the provider could not give one: ``failOpen`` or ``statusOnError``."""
    if provider.fail_open:
        return ProviderDecision(True, error=True)
    return ProviderDecision(False, provider.status_on_error, "", error=True)


@dataclass(frozen=True, slots=True)
class CheckBody:
    """The part of the request body a provider gets, and how the call must go."""

    data: bytes = b""
    partial: str | None = None  # the x-envoy-auth-partial-body value, when a body is sent
    too_large: bool = False  # answer PAYLOAD_TOO_LARGE without asking


def check_body(provider: Provider, request: HttpRequest) -> CheckBody:
    """The body to send per ``includeRequestBodyInCheck`` (Envoy sends none without it)."""
    settings = provider.include_request_body_in_check
    if settings is None or not (request.body or request.body_truncated):
        return CheckBody()
    limit = settings.max_request_bytes
    over = request.body_truncated or len(request.body) > limit
    if over and not settings.allow_partial_message:
        return CheckBody(too_large=True)
    return CheckBody(request.body[:limit], "true" if over else "false")


def removable(name: str) -> bool:
    """Envoy ignores requests to remove pseudo-headers and ``host`` (``headers_to_remove``)."""
    return bool(name) and not name.startswith(":") and name != "host"


class FailureLog:
    """Logs a provider's failures, at most one line per interval, counting the rest."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider
        self._last = -_ERROR_LOG_INTERVAL
        self._suppressed = 0

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last < _ERROR_LOG_INTERVAL:
            self._suppressed += 1
            return
        log.warning(
            "extension provider failed",
            provider=self._provider.name,
            address=self._provider.address,
            reason=reason,
            fail_open=self._provider.fail_open,
            similar_failures_not_logged=self._suppressed,
        )
        self._last = now
        self._suppressed = 0
