"""Istio ``RequestAuthentication``: which JWTs a workload accepts, and where to find them.

Validation follows Istio's (``ValidateRequestAuthentication``): an issuer per
rule, http(s) JWKS URIs, named headers, well-formed output headers.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.authz.jwt.jwks import parse_jwks
from services.authz.jwt.rules import JwtRule
from services.authz.workloads import Attachment, parse_attachment
from services.policy.durations import parse_proto_duration
from services.policy.errors import ErrorSink
from services.policy.fields import Fields
from services.policy.k8s import ObjectMeta, read_spec

KIND = "RequestAuthentication"
RULE_KEYS = frozenset(
    {
        "issuer",
        "audiences",
        "jwksUri",
        "jwks",
        "fromHeaders",
        "fromParams",
        "fromCookies",
        "outputPayloadToHeader",
        "forwardOriginalToken",
        "outputClaimToHeaders",
        "timeout",
        "spaceDelimitedClaims",
    }
)
_HEADER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~")


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    meta: ObjectMeta
    attachment: Attachment
    rules: tuple[JwtRule, ...]
    file: str
    line: int


def _header_name(fields: Fields, key: str, value: str) -> None:
    if not value or not set(value.lower()) <= _HEADER_NAME_CHARS:
        fields.error(key, f"'{value}' is not a valid HTTP header name")


def _jwt_rule(rule: Fields, source: str) -> JwtRule:
    issuer = rule.text("issuer", required=True)
    jwks_uri = rule.text("jwksUri") or None
    if jwks_uri is not None:
        parts = urlsplit(jwks_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            rule.error("jwksUri", f"'{jwks_uri}' must be an http or https URL")
    jwks = rule.text("jwks") or None
    if jwks is not None:
        key_set = parse_jwks(jwks)
        if not key_set.keys:
            problem = "; ".join(key_set.errors) or "no keys"
            rule.error("jwks", f"has no usable public key ({problem})")
    headers = []
    for header in rule.children(
        "fromHeaders", what="fromHeaders entry", allowed={"name", "prefix"}
    ):
        name = header.text("name", required=True)
        if name:
            _header_name(header, "name", name)
        headers.append((name.lower(), header.text("prefix")))
    claim_headers = []
    for output in rule.children(
        "outputClaimToHeaders", what="outputClaimToHeaders entry", allowed={"header", "claim"}
    ):
        header_name = output.text("header", required=True)
        claim = output.text("claim", required=True)
        if header_name:
            _header_name(output, "header", header_name)
        claim_headers.append((header_name.lower(), claim))
    payload_header = rule.text("outputPayloadToHeader") or None
    if payload_header:
        _header_name(rule, "outputPayloadToHeader", payload_header)
    timeout = 5.0
    timeout_text = rule.text("timeout")
    if timeout_text:
        try:
            timeout = parse_proto_duration(timeout_text) or timeout  # "0s": Istio's default
        except ValueError as exc:
            rule.error("timeout", str(exc))
    return JwtRule(
        issuer=issuer,
        audiences=rule.strings("audiences"),
        jwks=jwks,
        jwks_uri=jwks_uri,
        from_headers=tuple(headers),
        from_params=rule.strings("fromParams"),
        from_cookies=rule.strings("fromCookies"),
        forward_original_token=rule.flag("forwardOriginalToken"),
        output_payload_to_header=payload_header.lower() if payload_header else None,
        output_claim_to_headers=tuple(claim_headers),
        timeout=timeout,
        space_delimited_claims=rule.strings("spaceDelimitedClaims"),
        source=source,
    )


def compile_request_authentication(
    body: Any, line: int, sink: ErrorSink
) -> RequestAuthentication | None:
    """Validate one RequestAuthentication document; errors go to ``sink``."""
    errors_before = len(sink.errors)
    top, meta, spec = read_spec(
        body, line, sink, KIND, {"selector", "targetRef", "targetRefs", "jwtRules"}
    )
    assert spec is not None
    rules = tuple(
        _jwt_rule(rule, f"{meta.key}#jwtRules[{index}]")
        for index, rule in enumerate(spec.children("jwtRules", what="jwtRule", allowed=RULE_KEYS))
    )
    attachment = parse_attachment(spec, meta.namespace)
    if len(sink.errors) > errors_before:
        return None
    return RequestAuthentication(meta, attachment, rules, sink.file, top.line)
