"""Extension provider settings: Istio's ``envoyExtAuthzGrpc`` and ``envoyExtAuthzHttp``.

Field names, defaults and rejections follow ``istio/api mesh/v1alpha1/config.proto``
(``MeshConfig.ExtensionProvider``) and the checks in Istio's
``pilot/pkg/security/authz/builder/extauthz.go`` and ``pkg/config/validation``; a few more
reject values Envoy would refuse in the config Istio generates from them (noted below).

* ``service`` is ``[<namespace>/]<hostname>``. Istio resolves it in its service
  registry; mixerless dials ``<hostname>:<port>`` (``Provider.address``): the namespace
  part is dropped and the host name is resolved by DNS, so it should be a name the
  mixerless process can resolve (``ext-authz.foo.svc.cluster.local``) or an IP address.
* ``timeout`` is a protobuf Duration as JSON writes it: seconds with an ``s`` suffix
  (``"600s"``, ``"0.25s"``); ``"500ms"`` and bare numbers are rejected as protojson does.
  ``"0s"`` means no timeout. The default is 600 s.
* ``statusOnError`` is a string in Istio's API (``"503"``); a YAML integer is accepted
  too. It must be a code of Envoy's ``StatusCode`` enum. The default is 403.
* ``includeRequestBodyInCheck.maxRequestBytes`` must be at least 1 (Envoy's
  ``BufferSettings`` refuses 0).
* header-name lists take ``exact``, ``prefix*`` or ``*suffix`` patterns, matched without
  regard to case; a bare ``"*"`` is rejected (Istio), as is an empty pattern.
* ``includeAdditionalHeadersInCheck`` values go through Envoy's header formatter, as in
  Envoy: ``%%`` is a literal ``%`` and ``%OPERATOR%`` is replaced per request. The
  operators mixerless knows are in ``header_template.TEMPLATE_OPERATORS``; others are rejected.
  Keys may not be pseudo-headers or ``host`` (Envoy refuses to modify those), nor
  framing or hop-by-hop headers (``content-length``, ``connection``...): mixerless sends
  its own, and would break the check request otherwise.
* ``clearRouteCache`` is kept for completeness: whether Envoy recomputes the route after
  header changes is decided by the gateway's own ext_authz filter (pointed at mixerless),
  not per response.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from services.authz.providers.header_template import HeaderTemplate, host_port
from services.envoy_api import HTTP_STATUS_CODES
from services.policy.durations import PROTO_DURATION_HINT, parse_proto_duration
from services.policy.fields import Fields, describe
from services.policy.yamltext import LineList

GRPC_KIND = "envoyExtAuthzGrpc"
HTTP_KIND = "envoyExtAuthzHttp"
KINDS = (GRPC_KIND, HTTP_KIND)

DEFAULT_TIMEOUT = 600.0
DEFAULT_STATUS_ON_ERROR = 403
_UINT32_MAX = 2**32 - 1

_COMMON_KEYS = frozenset(
    {
        "service",
        "port",
        "timeout",
        "failOpen",
        "statusOnError",
        "clearRouteCache",
        "includeRequestBodyInCheck",
    }
)
GRPC_KEYS = _COMMON_KEYS
HTTP_HEADER_LIST_KEYS = (
    "includeRequestHeadersInCheck",
    "includeHeadersInCheck",
    "headersToUpstreamOnAllow",
    "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow",
)
HTTP_KEYS = _COMMON_KEYS | {
    "pathPrefix",
    "includeAdditionalHeadersInCheck",
    *HTTP_HEADER_LIST_KEYS,
}
BODY_KEYS = frozenset({"maxRequestBytes", "allowPartialMessage", "packAsBytes"})

_STATUS = re.compile(r"^[+-]?\d+$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONNECTION_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection"}
    | {"upgrade", "te", "trailer", "expect"}
)
_BAD_HEADER_VALUE = re.compile(r"[\x00\r\n]")
_BAD_PATH = re.compile(r"[\x00-\x20\x7f]|%(?![0-9A-Fa-f]{2})")


# --- header-name patterns ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderPatterns:
    """Header-name patterns as Istio writes them: ``exact``, ``prefix*``, ``*suffix``.

    Istio turns each into an Envoy ``StringMatcher`` with ``ignore_case``
    (``extauthz.go generateHeaders``): a leading ``*`` makes a suffix match of the
    rest, else a trailing ``*`` a prefix match, else an exact match.
    """

    patterns: tuple[str, ...] = ()
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        for pattern in self.patterns:
            lowered = pattern.lower()
            if lowered.startswith("*"):
                suffixes.append(lowered[1:])
            elif lowered.endswith("*"):
                prefixes.append(lowered[:-1])
            else:
                exact.add(lowered)
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_prefixes", tuple(prefixes))
        object.__setattr__(self, "_suffixes", tuple(suffixes))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, name: str) -> bool:
        """Whether the header ``name`` (any case) matches one of the patterns."""
        lowered = name.lower()
        return (
            lowered in self._exact
            or any(lowered.startswith(p) for p in self._prefixes)
            or any(lowered.endswith(s) for s in self._suffixes)
        )


# --- the provider settings -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestBody:
    """``includeRequestBodyInCheck``: send (up to ``max_request_bytes`` of) the body."""

    max_request_bytes: int
    allow_partial_message: bool = False
    pack_as_bytes: bool = False  # gRPC only: the body goes in ``raw_body``, not ``body``


@dataclass(frozen=True, slots=True)
class _ProviderBase:
    name: str
    service: str
    port: int
    timeout: float = DEFAULT_TIMEOUT  # seconds; 0 is no timeout
    fail_open: bool = False
    status_on_error: int = DEFAULT_STATUS_ON_ERROR
    clear_route_cache: bool = False
    include_request_body_in_check: RequestBody | None = None

    @property
    def host(self) -> str:
        """The host name (or IP address) of ``service``, without its namespace."""
        return self.service.rpartition("/")[2]

    @property
    def address(self) -> str:
        """``host:port``, the address mixerless dials (IPv6 in brackets)."""
        return host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class GrpcProvider(_ProviderBase):
    """``envoyExtAuthzGrpc``: an ``envoy.service.auth.v3.Authorization`` gRPC server."""


@dataclass(frozen=True, slots=True)
class HttpProvider(_ProviderBase):
    """``envoyExtAuthzHttp``: an HTTP server answering 200 to allow, anything else to deny."""

    path_prefix: str = ""
    include_request_headers_in_check: HeaderPatterns = HeaderPatterns()
    include_headers_in_check: HeaderPatterns = HeaderPatterns()  # deprecated form
    include_additional_headers_in_check: tuple[tuple[str, HeaderTemplate], ...] = ()
    headers_to_upstream_on_allow: HeaderPatterns = HeaderPatterns()
    headers_to_downstream_on_deny: HeaderPatterns = HeaderPatterns()
    headers_to_downstream_on_allow: HeaderPatterns = HeaderPatterns()

    @property
    def request_header_patterns(self) -> HeaderPatterns:
        """The client headers to send (the deprecated list counts only if the new one is empty)."""
        return self.include_request_headers_in_check or self.include_headers_in_check


Provider = GrpcProvider | HttpProvider


# --- parsing -------------------------------------------------------------------------------


def parse_provider(fields: Fields) -> Provider | None:
    """One ``extensionProviders`` entry with ``name`` and one of the two ext_authz kinds.

    Problems go to ``fields.sink`` naming file, line and field; the result is None if
    there were any. Keys other than ``name`` and the kinds are the caller's business
    (it builds ``fields`` with the keys it allows).
    """
    if not fields.valid:
        return None
    errors_before = len(fields.sink.errors)
    name = fields.text("name")
    if not name and fields.raw("name") in (None, ""):
        fields.missing("name", "extension provider name must not be empty")
    kinds = [kind for kind in KINDS if fields.raw(kind) is not None]
    if not kinds:
        fields.missing(KINDS[0], f"extension provider must set one of {', '.join(KINDS)}")
        return None
    if len(kinds) > 1:
        fields.error(kinds[1], f"only one of {', '.join(KINDS)} may be set")
        return None
    kind = kinds[0]
    spec = fields.child(kind, what=kind, allowed=GRPC_KEYS if kind == GRPC_KIND else HTTP_KEYS)
    if spec is None or not spec.valid:
        return None
    common = _parse_common(spec)
    provider: Provider
    if kind == GRPC_KIND:
        provider = GrpcProvider(name, **common)
    else:
        provider = HttpProvider(name, **common, **_parse_http(spec))
    return provider if len(fields.sink.errors) == errors_before else None


def _parse_common(spec: Fields) -> dict[str, Any]:
    service = spec.text("service")
    if not service and spec.raw("service") in (None, ""):
        spec.missing("service", "service must not be empty (format: [<namespace>/]<hostname>)")
    elif service:
        problem = _service_problem(service)
        if problem:
            spec.error("service", problem)
    port = spec.integer("port", required=True)
    raw_port = spec.raw("port")
    if isinstance(raw_port, int) and not isinstance(raw_port, bool) and not 1 <= port <= 65535:
        spec.error("port", f"port must be in the range [1, 65535], found: {port}")
    return {
        "service": service,
        "port": port,
        "timeout": _parse_timeout(spec),
        "fail_open": spec.flag("failOpen"),
        "status_on_error": _parse_status(spec),
        "clear_route_cache": spec.flag("clearRouteCache"),
        "include_request_body_in_check": _parse_body(spec),
    }


def _parse_http(spec: Fields) -> dict[str, Any]:
    prefix = spec.text("pathPrefix")
    if prefix and not prefix.startswith("/"):
        spec.error("pathPrefix", f"pathPrefix must begin with `/`, found: {prefix!r}")
    elif prefix and _BAD_PATH.search(prefix):
        spec.error("pathPrefix", f"invalid pathPrefix {prefix!r}: not a valid URL path")
    lists = {key: HeaderPatterns(_header_patterns(spec, key)) for key in HTTP_HEADER_LIST_KEYS}
    return {
        "path_prefix": prefix,
        "include_request_headers_in_check": lists["includeRequestHeadersInCheck"],
        "include_headers_in_check": lists["includeHeadersInCheck"],
        "include_additional_headers_in_check": _additional_headers(spec),
        "headers_to_upstream_on_allow": lists["headersToUpstreamOnAllow"],
        "headers_to_downstream_on_deny": lists["headersToDownstreamOnDeny"],
        "headers_to_downstream_on_allow": lists["headersToDownstreamOnAllow"],
    }


def _service_problem(service: str) -> str:
    """Istio's ``validateExtensionProviderService``: a host name or IP, maybe after ``ns/``."""
    parts = service.split("/")
    if len(parts) > 2:
        return f"invalid service {service!r}: expected [<namespace>/]<hostname>"
    if len(parts) == 2 and not _LABEL.match(parts[0]):
        return f"invalid service {service!r}: {parts[0]!r} is not a valid namespace"
    host = parts[-1]
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]  # a trailing dot is allowed
    if len(host) > 255 or not all(_LABEL.match(label) for label in labels):
        return f"invalid service {service!r}: {host!r} is not a valid host name or IP address"
    if labels[-1].isdigit():
        return f"invalid service {service!r}: top level domain {labels[-1]!r} is all-numeric"
    return ""


def _parse_timeout(spec: Fields) -> float:
    raw = spec.raw("timeout")
    if raw is None:
        return DEFAULT_TIMEOUT
    if not isinstance(raw, str):
        spec.error("timeout", f"must be {PROTO_DURATION_HINT}, got {describe(raw)}")
        return DEFAULT_TIMEOUT
    try:
        return parse_proto_duration(raw)
    except ValueError as exc:
        spec.error("timeout", str(exc))
        return DEFAULT_TIMEOUT


def _parse_status(spec: Fields) -> int:
    raw = spec.raw("statusOnError")
    if raw is None or raw == "":
        return DEFAULT_STATUS_ON_ERROR
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        spec.error("statusOnError", f'must be an HTTP status such as "503", got {describe(raw)}')
        return DEFAULT_STATUS_ON_ERROR
    text = str(raw)
    if not _STATUS.match(text):
        spec.error("statusOnError", f"invalid statusOnError {text!r}: not an integer")
        return DEFAULT_STATUS_ON_ERROR
    code = int(text)
    if code not in HTTP_STATUS_CODES:
        spec.error(
            "statusOnError",
            f"unsupported statusOnError {text}: not a status of Envoy's StatusCode enum "
            "(such as 401, 403, 500, 503)",
        )
        return DEFAULT_STATUS_ON_ERROR
    return code


def _parse_body(spec: Fields) -> RequestBody | None:
    key = "includeRequestBodyInCheck"
    body = spec.child(key, what=key, allowed=BODY_KEYS)
    if body is None or not body.valid:
        return None
    raw = body.raw("maxRequestBytes")
    size = body.integer("maxRequestBytes", maximum=_UINT32_MAX)
    if raw is None:
        body.missing(
            "maxRequestBytes", "maxRequestBytes must be set (Envoy refuses a buffer of 0 bytes)"
        )
    elif isinstance(raw, int) and not isinstance(raw, bool) and raw < 1:
        body.error("maxRequestBytes", f"maxRequestBytes must be at least 1, found: {raw}")
    return RequestBody(max(size, 1), body.flag("allowPartialMessage"), body.flag("packAsBytes"))


def _header_patterns(spec: Fields, key: str) -> tuple[str, ...]:
    items = spec.sequence(key)
    if items is None:
        return ()
    patterns: list[str] = []
    for index, item in enumerate(items):
        line = items.line_of(index) if isinstance(items, LineList) else spec.line_of(key)
        path = f"{spec.path_of(key)}[{index}]"
        if not isinstance(item, str):
            spec.sink.add(line, path, f"must be a header name pattern, got {describe(item)}")
        elif item == "*":
            spec.sink.add(
                line,
                path,
                'a single wildcard ("*") is not supported, '
                "change it to either prefix or suffix match",
            )
        elif not item:
            spec.sink.add(line, path, "an empty header name pattern matches nothing")
        else:
            patterns.append(item)
    return tuple(patterns)


def _additional_headers(spec: Fields) -> tuple[tuple[str, HeaderTemplate], ...]:
    mapping = spec.mapping("includeAdditionalHeadersInCheck")
    if mapping is None:
        return ()
    key = "includeAdditionalHeadersInCheck"
    line_of = getattr(mapping, "line_of", lambda _: spec.line_of(key))
    headers: list[tuple[str, HeaderTemplate]] = []
    for name in sorted(mapping, key=str):  # Istio sorts the keys; a later one overrides
        value = mapping[name]
        path = f"{spec.path_of(key)}.{name}"
        line = line_of(name)
        if isinstance(name, str) and (name.startswith(":") or name.lower() == "host"):
            spec.sink.add(line, path, ":-prefixed or host headers may not be modified")
            continue
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            spec.sink.add(line, path, f"invalid header name {name!r}")
            continue
        if name.lower() in _CONNECTION_HEADERS:
            spec.sink.add(line, path, f"{name} is about the connection; it cannot be set")
            continue
        if not isinstance(value, str):
            spec.sink.add(line, path, f"must be a string, got {describe(value)}")
            continue
        if _BAD_HEADER_VALUE.search(value):
            spec.sink.add(line, path, "a header value may not contain NUL, CR or LF")
            continue
        try:
            headers.append((name.lower(), HeaderTemplate(value)))
        except ValueError as exc:
            spec.sink.add(line, path, str(exc))
    return tuple(headers)
