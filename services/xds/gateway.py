"""The ``Gateway`` kind (``mixerless.io/v1alpha1``): one gateway's listeners and routes.

```yaml
apiVersion: mixerless.io/v1alpha1
kind: Gateway
metadata: {name: public, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  nodes: [public-gateway]            # Envoy node ids (or node clusters); default: the name
  listeners:
  - {name: http, port: 10000, address: 0.0.0.0, hosts: ["*"]}
  routes:
  - name: products
    match: {prefix: /product, methods: [GET], headers: [{name: x-env, exact: canary}]}
    backend: {endpoints: ["127.0.0.1:9000"]}
    timeout: 15s
    retries: {attempts: 2, retryOn: "5xx,connect-failure", perTryTimeout: 2s}
    authz: false                     # skip ext_authz (health checks)
  - name: legacy                     # Envoy answers itself (Istio's directResponse)
    match: {prefix: /legacy}
    directResponse: {status: 410, body: {string: "gone"}}   # or body: {bytes: <base64>}
```

A route has exactly one of ``backend`` and ``directResponse`` (``direct_response.py``);
a direct response takes no ``timeout``, ``retries`` or ``rateLimits``.

The labels and namespace are what Istio policies select the gateway by. ``authz`` and
``rateLimit`` say where Envoy reaches mixerless (default: this process's ports).
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from services import envoy_api as api
from services.policy.durations import parse_proto_duration
from services.policy.errors import ErrorSink
from services.policy.fields import Fields
from services.policy.k8s import ObjectMeta, read_spec
from services.xds.direct_response import NOT_RATE_LIMITED, DirectResponse, read_direct_response
from services.xds.route_match import RouteMatch, read_match

KIND = "Gateway"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^(\*|(\*\.)?[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?)(:\d+|:\*)?$")
ROUTE_KEYS = frozenset(
    {"name", "match", "backend", "directResponse", "timeout", "retries", "authz", "rateLimits"}
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int
    retry_on: str
    per_try_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    endpoints: tuple[Endpoint, ...]  # empty for a direct response
    http2: bool = False
    direct_response: DirectResponse | None = None  # set: Envoy answers, no backend
    timeout: float | None = None
    retries: Retries | None = None
    authz: bool = True
    rate_limits: tuple[dict[str, Any], ...] = ()  # hand-written Envoy RateLimit entries
    line: int = 0


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    address: str = "0.0.0.0"
    hosts: tuple[str, ...] = ("*",)
    certificate_file: str | None = None
    private_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """Where Envoy reaches one mixerless service, and how it treats failures."""

    address: Endpoint | None  # None: this process, on its configured port
    timeout: float
    fail_open: bool


@dataclass(frozen=True, slots=True)
class Gateway:
    meta: ObjectMeta
    nodes: tuple[str, ...]
    listeners: tuple[Listener, ...]
    routes: tuple[Route, ...]
    authz: Service
    rate_limit: Service
    domain: str  # the rate limit domain of this gateway's filter
    file: str
    line: int

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def labels_text(self) -> str:
        """``k=v,...``: the ``labels`` context extension authz selects policies by."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.meta.labels.items()))


def parse_endpoint(text: str) -> Endpoint:
    """``host:port`` or ``[v6]:port``; ``ValueError`` explains what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"'{text}' must be host:port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port of '{text}' must be 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Endpoint(host, port)


def _duration(fields: Fields, key: str) -> float | None:
    text = fields.text(key)
    if not text:
        return None
    try:
        seconds = parse_proto_duration(text)
    except ValueError as exc:
        fields.error(key, str(exc))
        return None
    if seconds <= 0:
        fields.error(key, "must be more than 0s")
        return None
    return seconds


def _backend(route: Fields) -> tuple[tuple[Endpoint, ...], bool]:
    """The endpoints of the route's ``backend`` (none when absent), and whether HTTP/2."""
    backend = route.child("backend", what="backend", allowed={"endpoints", "protocol"})
    if backend is None:
        return (), False
    endpoints: list[Endpoint] = []
    for text in backend.strings("endpoints"):
        try:
            endpoints.append(parse_endpoint(text))
        except ValueError as exc:
            backend.error("endpoints", str(exc))
    if not endpoints and "endpoints" not in backend:
        backend.missing("endpoints", "backend needs at least one endpoint (host:port)")
    protocol = backend.text("protocol") or "http1"
    if protocol not in ("http1", "http2"):
        backend.error("protocol", f"protocol must be http1 or http2, got '{protocol}'")
    if endpoints and len({e.is_ip for e in endpoints}) > 1:
        backend.error("endpoints", "use either IP addresses or host names, not both")
    return tuple(endpoints), protocol == "http2"


def _action(route: Fields) -> tuple[tuple[Endpoint, ...], bool, DirectResponse | None]:
    """Exactly one of ``backend`` and ``directResponse``: what the route does with a request."""
    given = [key for key in ("backend", "directResponse") if route.raw(key) is not None]
    if not given:
        message = "a route needs a backend (endpoints: [host:port]) or a directResponse"
        route.missing("backend", message)
    elif len(given) > 1:
        route.error("directResponse", "a route takes either backend or directResponse, not both")
    elif given == ["directResponse"]:
        for key in ("timeout", "retries"):
            if key in route:
                route.error(key, f"a directResponse route has no backend to apply {key} to")
        if "rateLimits" in route:
            route.error("rateLimits", NOT_RATE_LIMITED)
    endpoints, http2 = _backend(route)
    return endpoints, http2, read_direct_response(route)


def _route(route: Fields, names: dict[str, int]) -> Route | None:
    name = route.text("name", required=True)
    if name and not _NAME.match(name):
        route.error("name", f"'{name}' must be a DNS label (lower-case letters, digits, -)")
    if name in names:
        route.error("name", f"duplicate route '{name}' (first at line {names[name]})")
    names[name] = route.line
    match = read_match(route)
    endpoints, http2, direct_response = _action(route)
    retries = None
    retry = route.child("retries", what="retries", allowed={"attempts", "retryOn", "perTryTimeout"})
    if retry is not None:
        retries = Retries(
            retry.integer("attempts", default=1, minimum=0, maximum=10),
            retry.text("retryOn") or "5xx,connect-failure,refused-stream",
            _duration(retry, "perTryTimeout"),
        )
    rate_limits = route.sequence("rateLimits") or ()
    for index, entry in enumerate(rate_limits):
        if not isinstance(entry, dict):
            route.error("rateLimits", f"entry {index} must be a mapping (an Envoy RateLimit)")
            continue
        try:
            json_format.ParseDict(_plain(entry), api.RouteRateLimit())
        except json_format.ParseError as exc:
            route.error("rateLimits", f"entry {index} is not an Envoy RateLimit: {exc}")
    if not name:
        return None
    return Route(
        name,
        match,
        endpoints,
        http2,
        direct_response,
        _duration(route, "timeout"),
        retries,
        route.flag("authz", default=True),
        tuple(_plain(e) for e in rate_limits if isinstance(e, dict)),
        route.line,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _listener(listener: Fields, ports: dict[int, str]) -> Listener | None:
    name = listener.text("name", required=True)
    if name and not _NAME.match(name):
        listener.error("name", f"'{name}' must be a DNS label (lower-case letters, digits, -)")
    port = listener.integer("port", required=True, minimum=1, maximum=65535)
    if port in ports:
        listener.error("port", f"port {port} is already used by listener '{ports[port]}'")
    ports[port] = name
    address = listener.text("address") or "0.0.0.0"
    try:
        ipaddress.ip_address(address)
    except ValueError:
        listener.error("address", f"'{address}' must be an IP address")
    hosts = listener.strings("hosts") or ("*",)
    for host in hosts:
        if not _HOST.match(host):
            listener.error("hosts", f"'{host}' is not a host name (or *, *.domain)")
    tls = listener.child("tls", what="tls", allowed={"certificateFile", "privateKeyFile"})
    certificate = key = None
    if tls is not None:
        certificate = tls.text("certificateFile", required=True) or None
        key = tls.text("privateKeyFile", required=True) or None
    if not name or not port:
        return None
    return Listener(name, port, address, hosts, certificate, key)


def _service(spec: Fields, key: str, timeout: float, fail_open: bool) -> Service:
    what = spec.child(key, what=key, allowed={"address", "timeout", "failOpen"})
    if what is None:
        return Service(None, timeout, fail_open)
    address = None
    if "address" in what:
        try:
            address = parse_endpoint(what.text("address"))
        except ValueError as exc:
            what.error("address", str(exc))
    return Service(
        address,
        _duration(what, "timeout") or timeout,
        what.flag("failOpen", default=fail_open),
    )


def compile_gateway(body: Any, line: int, sink: ErrorSink) -> Gateway | None:
    """Validate one Gateway document; errors go to ``sink``."""
    errors_before = len(sink.errors)
    top, meta, spec = read_spec(
        body,
        line,
        sink,
        KIND,
        {"nodes", "listeners", "routes", "authz", "rateLimit", "domain"},
        required="a Gateway needs a spec with listeners and routes",
    )
    if spec is None:
        return None
    if meta.name and not _NAME.match(meta.name):
        top.error("metadata", f"name '{meta.name}' must be a DNS label")
    ports: dict[int, str] = {}
    listeners = [
        found
        for listener in spec.children(
            "listeners", what="listener", allowed={"name", "port", "address", "hosts", "tls"}
        )
        if (found := _listener(listener, ports)) is not None
    ]
    if not listeners and "listeners" not in spec:
        spec.missing("listeners", "a Gateway needs at least one listener")
    names: dict[str, int] = {}
    routes = [
        compiled
        for route in spec.children(
            "routes",
            what="route",
            allowed=ROUTE_KEYS,
        )
        if (compiled := _route(route, names)) is not None
    ]
    if not routes and "routes" not in spec:
        spec.missing("routes", "a Gateway needs at least one route")
    nodes = spec.strings("nodes") or (meta.name,)
    gateway = Gateway(
        meta=meta,
        nodes=nodes,
        listeners=tuple(listeners),
        routes=tuple(routes),
        authz=_service(spec, "authz", timeout=1.0, fail_open=False),
        rate_limit=_service(spec, "rateLimit", timeout=0.25, fail_open=False),
        domain=spec.text("domain") or meta.name,
        file=sink.file,
        line=top.line,
    )
    return gateway if len(sink.errors) == errors_before else None
