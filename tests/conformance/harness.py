"""The conformance harness: policy builders, ``Case`` tables, and what a Check answered.

Every conformance case goes through the real gRPC API: its YAML is written to a policy
directory, an authz-only ``Application`` serves it on a free port, and an Envoy-shaped
``CheckRequest`` is sent over a ``grpc.aio`` channel (``conftest.py``). The answer is
reduced to an ``Outcome`` (HTTP status, body, headers both ways) and compared with the
case's expectations; a mismatch names the case and the reference section it pins
(``/work/shared/reference/istio-policy-semantics.md``).

Builders keep the tables short: ``allow(rule(to=op(paths=["/a"])))`` is an ALLOW
AuthorizationPolicy in the root namespace, ``yaml_docs(...)`` joins documents.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from services import envoy_api as api

ROOT_NAMESPACE = "istio-system"
RBAC_DENIED = "RBAC: access denied"
GRPC_OK = 0
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16

# The request a case sends unless it says otherwise: a client behind the gateway.
DEFAULT_HOST = "api.example.com"
DEFAULT_PEER = "192.0.2.10"  # the gateway's direct peer (a client or a load balancer)
DEFAULT_DESTINATION = "10.1.0.5"
DEFAULT_PORT = 8080


# --- YAML builders ----------------------------------------------------------------------


def yaml_docs(*documents: Mapping[str, Any] | str) -> str:
    """Documents (dicts or YAML text) as one multi-document YAML text."""
    parts = [
        d if isinstance(d, str) else yaml.safe_dump(dict(d), sort_keys=False) for d in documents
    ]
    return "---\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


def src(**fields: Any) -> dict[str, Any]:
    """A ``from`` entry: ``{source: {...}}``."""
    return {"source": fields}


def op(**fields: Any) -> dict[str, Any]:
    """A ``to`` entry: ``{operation: {...}}``."""
    return {"operation": fields}


def cond(key: str, values: Sequence[str] | None = None, not_values: Sequence[str] | None = None):
    """A ``when`` condition."""
    found: dict[str, Any] = {"key": key}
    if values is not None:
        found["values"] = list(values)
    if not_values is not None:
        found["notValues"] = list(not_values)
    return found


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def rule(*, from_: Any = None, to: Any = None, when: Any = None) -> dict[str, Any]:
    """One rule; each part is one entry or a list of entries."""
    found: dict[str, Any] = {}
    if from_ is not None:
        found["from"] = _listed(from_)
    if to is not None:
        found["to"] = _listed(to)
    if when is not None:
        found["when"] = _listed(when)
    return found


def authorization_policy(
    action: str | None,
    *rules: Mapping[str, Any],
    name: str | None = None,
    namespace: str = ROOT_NAMESPACE,
    selector: Mapping[str, str] | None = None,
    target_refs: Sequence[Mapping[str, str]] | None = None,
    provider: str | None = None,
    dry_run: str | None = None,
    no_rules: bool = False,
) -> dict[str, Any]:
    """An AuthorizationPolicy; ``no_rules`` leaves ``rules`` out (allow-nothing)."""
    spec: dict[str, Any] = {}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if target_refs is not None:
        spec["targetRefs"] = [dict(r) for r in target_refs]
    if action is not None:
        spec["action"] = action
    if provider is not None:
        spec["provider"] = {"name": provider}
    if not no_rules:
        spec["rules"] = [dict(r) for r in rules]
    metadata: dict[str, Any] = {
        "name": name or (action or "allow").lower(),
        "namespace": namespace,
    }
    if dry_run is not None:
        metadata["annotations"] = {"istio.io/dry-run": dry_run}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }


def allow(*rules: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    return authorization_policy("ALLOW", *rules, **options)


def deny(*rules: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    return authorization_policy("DENY", *rules, **options)


def audit(*rules: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    return authorization_policy("AUDIT", *rules, **options)


def custom(provider: str, *rules: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    options.setdefault("name", f"custom-{provider}")
    return authorization_policy("CUSTOM", *rules, provider=provider, **options)


def jwt_rule(issuer: str, **fields: Any) -> dict[str, Any]:
    """One ``jwtRules`` entry (Istio field names as keyword arguments)."""
    return {"issuer": issuer, **fields}


def request_authentication(
    *rules: Mapping[str, Any],
    name: str = "jwt",
    namespace: str = ROOT_NAMESPACE,
    selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"jwtRules": [dict(r) for r in rules]}
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def mesh_config(
    *,
    num_trusted_proxies: int | None = None,
    path_normalization: str | None = None,
    providers: Sequence[Mapping[str, Any]] = (),
    root_namespace: str | None = None,
) -> str:
    """A mixerless ``MeshConfig`` document (a subset of Istio's meshConfig)."""
    spec: dict[str, Any] = {}
    if root_namespace is not None:
        spec["rootNamespace"] = root_namespace
    if providers:
        spec["extensionProviders"] = [dict(p) for p in providers]
    if path_normalization is not None:
        spec["pathNormalization"] = {"normalization": path_normalization}
    if num_trusted_proxies is not None:
        spec["defaultConfig"] = {"gatewayTopology": {"numTrustedProxies": num_trusted_proxies}}
    return yaml_docs(
        {
            "apiVersion": "mixerless.io/v1alpha1",
            "kind": "MeshConfig",
            "metadata": {"name": "mesh", "namespace": ROOT_NAMESPACE},
            "spec": spec,
        }
    )


# --- requests -----------------------------------------------------------------------------


def check_request(
    *,
    method: str = "GET",
    host: str = DEFAULT_HOST,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    source_ip: str = DEFAULT_PEER,
    source_port: int = 40000,
    source_principal: str = "",
    xff: str | None = None,
    destination_ip: str = DEFAULT_DESTINATION,
    destination_port: int = DEFAULT_PORT,
    sni: str = "",
    context: Mapping[str, str] | None = None,
    scheme: str = "http",
    body: bytes = b"",
    protocol: str = "HTTP/1.1",
    raw_headers: Sequence[tuple[str, str]] | None = None,
) -> Any:
    """A ``CheckRequest`` shaped as Envoy's ext_authz filter builds it at a gateway.

    ``headers`` are the client's; the pseudo-headers Envoy puts in the map are added.
    ``xff`` is X-Forwarded-For as the authz server receives it, i.e. *after* Envoy
    appended its peer (pass it verbatim; None sends no XFF). ``source_principal`` is the
    peer's SPIFFE URI SAN (mTLS); empty means plaintext. ``raw_headers`` (repeats
    allowed) switches to the ``header_map`` form Envoy sends with ``encode_raw_headers``:
    every header, one entry per value, as bytes.
    """
    request = api.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = source_ip
    attributes.source.address.socket_address.port_value = source_port
    attributes.source.principal = source_principal
    attributes.destination.address.socket_address.address = destination_ip
    attributes.destination.address.socket_address.port_value = destination_port
    if sni:
        attributes.tls_session.sni = sni
    attributes.context_extensions.update(dict(context or {}))
    http = attributes.request.http
    http.id = "conformance"
    http.method = method
    http.host = host
    http.path = path
    http.scheme = scheme
    http.protocol = protocol
    sent = {
        ":authority": host,
        ":method": method,
        ":path": path,
        ":scheme": scheme,
        "x-forwarded-proto": scheme,
        "x-request-id": "conformance",
    }
    if xff is not None:
        sent["x-forwarded-for"] = xff
    if body:
        http.body = body.decode("utf-8")
        http.size = len(body)
        sent["content-length"] = str(len(body))
    sent.update({name.lower(): value for name, value in (headers or {}).items()})
    if raw_headers is None:
        http.headers.update(sent)
        return request
    for name, value in [*sent.items(), *raw_headers]:
        http.header_map.headers.add(key=name.lower(), raw_value=value.encode())
    return request


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- answers --------------------------------------------------------------------------------


def _header_pairs(options: Iterable[Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for option in options:
        name = option.header.key.lower()
        value = option.header.value or option.header.raw_value.decode("utf-8", "replace")
        found[name] = f"{found[name]},{value}" if name in found else value
    return found


@dataclass(frozen=True)
class Outcome:
    """A ``CheckResponse`` as the client and the upstream would see its effect."""

    grpc_code: int
    status: int  # 200 when allowed, else the denied_response status (0 if none)
    body: str
    headers: dict[str, str]  # to the client: denied headers, or response_headers_to_add
    upstream: dict[str, str]  # allowed: headers set on the upstream request
    removed: tuple[str, ...]  # allowed: headers_to_remove
    query_removed: tuple[str, ...]
    metadata: dict[str, Any]

    @classmethod
    def of(cls, response: Any) -> Outcome:
        metadata = json_format.MessageToDict(response.dynamic_metadata)
        if response.status.code == GRPC_OK:
            ok = response.ok_response
            return cls(
                GRPC_OK,
                200,
                "",
                _header_pairs(ok.response_headers_to_add),
                _header_pairs(ok.headers),
                tuple(n.lower() for n in ok.headers_to_remove),
                tuple(ok.query_parameters_to_remove),
                metadata,
            )
        denied = response.denied_response
        return cls(
            response.status.code,
            denied.status.code,
            denied.body,
            _header_pairs(denied.headers),
            {},
            (),
            (),
            metadata,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "body": self.body,
            "headers": self.headers,
            "upstream": self.upstream,
            "removed": list(self.removed),
        }


# --- cases ------------------------------------------------------------------------------------

ABSENT = None  # in expect_headers / expect_upstream_headers: this header must not be set


@dataclass(frozen=True)
class Case:
    """One request against one policy directory, and what Istio + Envoy would answer.

    ``policy_yaml`` holds the AuthorizationPolicy/RequestAuthentication documents and
    ``mesh`` an optional MeshConfig document. Header expectations are subsets: a name
    mapped to ``ABSENT`` must not be there. ``ref`` names the reference section.
    """

    name: str
    policy_yaml: str
    request: Mapping[str, Any] = field(default_factory=dict)
    expect_status: int = 200
    expect_body: str | None = None
    expect_headers: Mapping[str, str | None] = field(default_factory=dict)
    expect_upstream_headers: Mapping[str, str | None] = field(default_factory=dict)
    expect_removed: Sequence[str] = ()
    expect_kept: Sequence[str] = ()  # must NOT be in headers_to_remove
    expect_query_removed: Sequence[str] = ()  # query_parameters_to_remove
    mesh: str | None = None
    ref: str = ""

    def param(self) -> Any:
        return pytest.param(self, id=self.name)


def params(cases: Iterable[Case]) -> list[Any]:
    """``pytest.param`` per case, id = case name; duplicate names are a table bug."""
    found = list(cases)
    names = [c.name for c in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate case names: {duplicates}"
    return [c.param() for c in found]


def expected_grpc_code(status: int) -> int:
    if status == 200:
        return GRPC_OK
    return GRPC_UNAUTHENTICATED if status == 401 else GRPC_PERMISSION_DENIED


def assert_outcome(case: Case, outcome: Outcome) -> None:
    """Compare what the case pins with what the service answered; one readable diff."""
    want: dict[str, Any] = {"status": case.expect_status}
    got: dict[str, Any] = {"status": outcome.status}
    want["grpc_code"] = expected_grpc_code(case.expect_status)
    got["grpc_code"] = outcome.grpc_code
    if case.expect_body is not None:
        want["body"], got["body"] = case.expect_body, outcome.body
    for label, expected, actual in (
        ("headers", case.expect_headers, outcome.headers),
        ("upstream", case.expect_upstream_headers, outcome.upstream),
    ):
        if expected:
            want[label] = dict(expected)
            got[label] = {name: actual.get(name) for name in expected}
    if case.expect_removed:
        want["removed"] = sorted(case.expect_removed)
        got["removed"] = sorted(n for n in case.expect_removed if n in outcome.removed)
    if case.expect_kept:
        want["kept"] = sorted(case.expect_kept)
        got["kept"] = sorted(n for n in case.expect_kept if n not in outcome.removed)
    if case.expect_query_removed:
        want["query_removed"] = sorted(case.expect_query_removed)
        got["query_removed"] = sorted(outcome.query_removed)
    where = f" (reference {case.ref})" if case.ref else ""
    assert got == want, (
        f"case {case.name!r}{where}\n  expected {want}\n  answered {got}\n"
        f"  full answer {outcome.summary()}"
    )


def b64_json(value: Any) -> str:
    """Standard base64 of compact JSON, as Envoy writes object claims to headers."""
    text = json.dumps(value, separators=(",", ":"))
    return base64.b64encode(text.encode()).decode()


Row = tuple[str, Mapping[str, Any], int]


def matrix(
    name: str, policy_yaml: str, rows: Iterable[Row], *, ref: str = "", mesh: str | None = None
) -> list[Case]:
    """One case per ``(label, request, status)`` row, all against the same policies."""
    return [
        Case(f"{name}: {label}", policy_yaml, request, status, mesh=mesh, ref=ref)
        for label, request, status in rows
    ]
