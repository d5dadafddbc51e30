"""Istio ``AuthorizationPolicy`` (security.istio.io v1 and v1beta1): validate, compile.

Compiled form: a policy is a tuple of ``Rule``; a rule is (any ``from``) and
(any ``to``) and (all ``when``); each ``from``/``to`` entry is a tuple of
``Check`` (all must hold); a check reads one attribute and holds when the value
matches the positive patterns (if any) and none of the negative ones. An absent
attribute never matches a positive pattern, so only its ``not`` form holds.

Validation rejects what Istio's admission webhook rejects
(``pkg/config/validation/validation.go``, ``pkg/config/security/security.go``).
"""

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.authz import identity_matchers, matchers
from services.authz.attributes import Attributes, HeaderValues
from services.authz.workloads import Attachment, parse_attachment
from services.policy.errors import ErrorSink
from services.policy.fields import Fields, describe
from services.policy.k8s import ObjectMeta, read_spec

KIND = "AuthorizationPolicy"
DRY_RUN_ANNOTATION = "istio.io/dry-run"


class Matcher(Protocol):
    def matches(self, value: Any) -> bool: ...


Getter = Callable[[Attributes], Any]


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@dataclass(frozen=True, slots=True)
class Check:
    """One field of a source/operation, or one ``when`` condition."""

    name: str
    get: Getter
    positive: Matcher | None
    negative: Matcher | None

    def holds(self, attributes: Attributes) -> bool:
        value = self.get(attributes)
        if isinstance(value, HeaderValues):
            return self._holds_each(value)  # a repeated header: each value on its own
        if self.positive is not None and (value is None or not self.positive.matches(value)):
            return False
        return self.negative is None or value is None or not self.negative.matches(value)

    def _holds_each(self, values: tuple[str, ...]) -> bool:
        """Some value matches the positive patterns, and none matches a negative one."""
        if self.positive is not None and not any(self.positive.matches(v) for v in values):
            return False
        return self.negative is None or not any(self.negative.matches(v) for v in values)


@dataclass(frozen=True, slots=True)
class Rule:
    sources: tuple[tuple[Check, ...], ...] | None
    operations: tuple[tuple[Check, ...], ...] | None
    conditions: tuple[Check, ...]

    def matches(self, attributes: Attributes) -> bool:
        # Plain loops: this runs for every rule of every policy on every request, and
        # generator expressions cost more than the checks themselves.
        if self.sources is not None and not _any_entry(self.sources, attributes):
            return False
        if self.operations is not None and not _any_entry(self.operations, attributes):
            return False
        for check in self.conditions:  # noqa: SIM110 - all() over a generator is slower here
            if not check.holds(attributes):
                return False
        return True


def _any_entry(entries: tuple[tuple[Check, ...], ...], attributes: Attributes) -> bool:
    """Some ``from``/``to`` entry whose checks all hold."""
    for checks in entries:
        for check in checks:
            if not check.holds(attributes):
                break
        else:
            return True
    return False


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """A compiled policy, with where it came from."""

    meta: ObjectMeta
    action: Action
    provider: str
    dry_run: bool
    attachment: Attachment
    rules: tuple[Rule, ...]
    file: str
    line: int

    @property
    def key(self) -> str:
        return self.meta.key

    def first_match(self, attributes: Attributes) -> int | None:
        """The index of the first rule that matches, or None."""
        for index, rule in enumerate(self.rules):
            if rule.matches(attributes):
                return index
        return None


# --- attribute readers ------------------------------------------------------------------


def _principal(a: Attributes) -> str | None:
    return a.source_principal or None


def _request_principal(a: Attributes) -> tuple[str, str | None] | None:
    if a.issuer is None:
        return None
    return (a.issuer, a.subject)  # no `sub`: never matches a principal (Envoy's behaviour)


def _port(a: Attributes) -> int | None:
    return a.destination_port or None


SOURCE_FIELDS: dict[str, tuple[Getter, Callable[..., Matcher], bool]] = {
    # field: (reader, matcher factory, needs mTLS or JWT: refused in CUSTOM rules)
    "principals": (_principal, identity_matchers.principal_matcher, True),
    "namespaces": (_principal, identity_matchers.namespace_matcher, True),
    "serviceAccounts": (_principal, identity_matchers.service_account_matcher, True),
    "requestPrincipals": (_request_principal, identity_matchers.request_principal_matcher, True),
    "ipBlocks": (lambda a: a.source_ip or None, matchers.ip_matcher, False),
    "remoteIpBlocks": (lambda a: a.remote_ip or None, matchers.ip_matcher, False),
}
OPERATION_FIELDS: dict[str, tuple[Getter, Callable[..., Matcher]]] = {
    "hosts": (lambda a: a.host, matchers.host_matcher),
    "ports": (_port, matchers.port_matcher),
    "methods": (lambda a: a.method, matchers.method_matcher),
    "paths": (lambda a: a.path, matchers.path_matcher),
}
SOURCE_KEYS = frozenset(SOURCE_FIELDS) | {"not" + k[0].upper() + k[1:] for k in SOURCE_FIELDS}
OPERATION_KEYS = frozenset(OPERATION_FIELDS) | {
    "not" + k[0].upper() + k[1:] for k in OPERATION_FIELDS
}
REMOVED_CONDITIONS = {
    "destination.labels",
    "destination.name",
    "destination.namespace",
    "destination.user",
}
# when keys that need an mTLS peer identity or a JWT: not allowed in CUSTOM rules
IDENTITY_CONDITIONS = {
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
}
_BRACKETED = re.compile(r"^([a-z.]+?)((?:\[[^\[\]]+\])+)$", re.IGNORECASE)


def _not(name: str) -> str:
    return "not" + name[0].upper() + name[1:]


def _values(fields: Fields, key: str) -> list[str] | None:
    """A non-empty list of non-empty strings, or None (absent or invalid: reported)."""
    raw = fields.sequence(key)
    if raw is None:
        if key in fields and fields.raw(key) is None:
            fields.error(key, "must not be null")
        return None
    if not raw:
        fields.error(key, "must not be an empty list")
        return None
    values: list[str] = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, str | int):
            fields.error(key, f"values must be strings, got {describe(item)}")
            return None
        text = str(item)
        if not text:
            fields.error(key, "values must not be empty strings")
            return None
        values.append(text)
    return values


def _compile(fields: Fields, key: str, factory: Callable[..., Matcher], *args: Any) -> Any:
    values = _values(fields, key)
    if values is None:
        return None
    try:
        return factory(values, *args)
    except ValueError as exc:
        fields.error(key, str(exc))
        return None


def _source_checks(source: Fields, namespace: str, custom: bool) -> tuple[Check, ...]:
    checks: list[Check] = []
    for name, (getter, factory, identity) in SOURCE_FIELDS.items():
        args = (namespace,) if name == "serviceAccounts" else ()
        positive = _compile(source, name, factory, *args)
        negative = _compile(source, _not(name), factory, *args)
        if custom and identity:
            for key in (name, _not(name)):
                if key in source:
                    source.error(key, f"{key} cannot be used in a CUSTOM policy")
        if positive is not None or negative is not None:
            checks.append(Check(name, getter, positive, negative))
    has_accounts = "serviceAccounts" in source or "notServiceAccounts" in source
    if has_accounts and any(
        k in source for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")
    ):
        source.error(
            "serviceAccounts", "serviceAccounts cannot be combined with principals or namespaces"
        )
    return tuple(checks)


def _operation_checks(operation: Fields) -> tuple[Check, ...]:
    checks: list[Check] = []
    for name, (getter, factory) in OPERATION_FIELDS.items():
        positive = _compile(operation, name, factory)
        negative = _compile(operation, _not(name), factory)
        if positive is not None or negative is not None:
            checks.append(Check(name, getter, positive, negative))
    return tuple(checks)


Reader = tuple[Getter, Callable[..., Matcher], tuple[Any, ...]]


def _condition_reader(key: str, namespace: str) -> Reader | str:
    """How to read and match a ``when`` key; an error message when the key is invalid."""
    simple: dict[str, tuple[Getter, Callable[..., Matcher]]] = {
        "source.ip": (SOURCE_FIELDS["ipBlocks"][0], matchers.ip_matcher),
        "remote.ip": (SOURCE_FIELDS["remoteIpBlocks"][0], matchers.ip_matcher),
        "source.namespace": (_principal, identity_matchers.namespace_matcher),
        "source.principal": (_principal, identity_matchers.principal_matcher),
        "source.trustDomain": (_principal, identity_matchers.trust_domain_matcher),
        "request.auth.principal": (_request_principal, identity_matchers.request_principal_matcher),
        "request.auth.audiences": (lambda a: a.claim(("aud",)), identity_matchers.claim_matcher),
        "request.auth.presenter": (lambda a: a.claim(("azp",)), identity_matchers.claim_matcher),
        "destination.ip": (lambda a: a.destination_ip or None, matchers.ip_matcher),
        "destination.port": (_port, matchers.port_matcher),
        "connection.sni": (lambda a: a.sni or None, matchers.string_set),
    }
    if key in simple:
        getter, factory = simple[key]
        return getter, factory, ()
    if key == "source.serviceAccount":
        return _principal, identity_matchers.service_account_matcher, (namespace,)
    if key.split("[", 1)[0] in REMOVED_CONDITIONS:
        return f"'{key}' was removed from Istio and is not supported"
    found = _BRACKETED.match(key)
    if found is None:
        if "[" in key or "]" in key:
            return f"malformed key '{key}': expected name[part] with balanced brackets"
        return f"unknown condition key '{key}'"
    prefix, brackets = found.group(1), found.group(2)
    parts = tuple(part for part in brackets[1:-1].split("]["))
    if prefix == "request.headers":
        if len(parts) != 1:
            return f"malformed key '{key}': request.headers takes one header name"
        name = parts[0].lower()
        return (lambda a, n=name: a.header(n)), matchers.header_value_matcher, ()
    if prefix == "request.auth.claims":
        return (lambda a, p=parts: a.claim(p)), identity_matchers.claim_matcher, ()
    if prefix.startswith("experimental.envoy.filters."):
        return f"'{key}' reads Envoy filter metadata, which an external authorizer cannot see"
    return f"unknown condition key '{key}'"


def _conditions(rule: Fields, namespace: str, custom: bool) -> tuple[Check, ...]:
    checks: list[Check] = []
    if "when" in rule and rule.raw("when") in (None, []):
        rule.error("when", "must not be empty")
    for condition in rule.children(
        "when", what="condition", allowed={"key", "values", "notValues"}
    ):
        key = condition.text("key", required=True)
        if not key:
            continue
        reader = _condition_reader(key, namespace)
        if isinstance(reader, str):
            condition.error("key", reader)
            continue
        if custom and (key in IDENTITY_CONDITIONS or key.startswith("request.auth.")):
            condition.error("key", f"'{key}' cannot be used in a CUSTOM policy")
        getter, factory, args = reader
        if "values" not in condition and "notValues" not in condition:
            condition.missing("values", "a condition needs values or notValues")
            continue
        positive = _compile(condition, "values", factory, *args)
        negative = _compile(condition, "notValues", factory, *args)
        if positive is not None or negative is not None:
            checks.append(Check(key, getter, positive, negative))
    return tuple(checks)


def _entries(rule: Fields, key: str, inner: str, allowed: frozenset[str]) -> list[Fields] | None:
    """The ``source``/``operation`` of each ``from``/``to`` entry; None when ``key`` is absent."""
    if key not in rule:
        return None
    raw = rule.raw(key)
    if raw is None or raw == []:
        rule.error(key, "must not be empty")
        return []
    found: list[Fields] = []
    for entry in rule.children(key, what=f"{key} entry", allowed={inner}):
        body = entry.child(inner, what=inner, allowed=allowed)
        if body is None:
            entry.missing(inner, f"{key} entry must have a non-empty '{inner}'")
            continue
        if body.valid and body.is_empty():
            body.sink.add(body.line, body.path, f"{inner} must not be empty")
            continue
        found.append(body)
    return found


def _rules(spec: Fields, namespace: str, custom: bool) -> list[Rule]:
    rules: list[Rule] = []
    for rule in spec.children("rules", what="rule", allowed={"from", "to", "when"}):
        sources = _entries(rule, "from", "source", SOURCE_KEYS)
        operations = _entries(rule, "to", "operation", OPERATION_KEYS)
        compiled_sources = None
        if sources is not None:
            compiled_sources = tuple(_source_checks(s, namespace, custom) for s in sources)
        compiled_operations = None
        if operations is not None:
            compiled_operations = tuple(_operation_checks(o) for o in operations)
        rules.append(
            Rule(compiled_sources, compiled_operations, _conditions(rule, namespace, custom))
        )
    return rules


def parse_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``, which Istio uses for the dry-run annotation."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def compile_policy(body: Any, line: int, sink: ErrorSink) -> AuthorizationPolicy | None:
    """Validate and compile one AuthorizationPolicy document; errors go to ``sink``."""
    # `spec: {}` and no spec at all both mean "allow nothing"
    top, meta, spec = read_spec(
        body,
        line,
        sink,
        KIND,
        {"selector", "targetRef", "targetRefs", "action", "provider", "rules"},
    )
    assert spec is not None
    errors_before = len(sink.errors)
    action_text = spec.text("action") or "ALLOW"
    try:
        action = Action(action_text)
    except ValueError:
        spec.error("action", f"unknown action '{action_text}' (ALLOW, DENY, AUDIT or CUSTOM)")
        action = Action.ALLOW
    custom = action is Action.CUSTOM
    provider_name = ""
    provider = spec.child("provider", what="provider", allowed={"name"})
    if provider is not None:
        provider_name = provider.text("name")
        if not custom:
            spec.error("provider", "provider can only be set with action CUSTOM")
    if custom and not provider_name:
        spec.missing("provider", "a CUSTOM policy must name its provider (provider.name)")
    rules = _rules(spec, meta.namespace, custom)
    if action in (Action.DENY, Action.CUSTOM) and not rules:
        spec.missing("rules", f"a {action.value} policy must have at least one rule")
    dry_run = False
    annotation = meta.annotations.get(DRY_RUN_ANNOTATION)
    if annotation is not None:
        parsed = parse_bool(annotation)
        if parsed is None:
            top.error(
                "metadata.annotations",
                f"annotation {DRY_RUN_ANNOTATION} must be true or false, got '{annotation}' "
                "(Istio would log this and enforce the policy)",
            )
        else:
            dry_run = parsed
    attachment = parse_attachment(spec, meta.namespace)
    if len(sink.errors) > errors_before or not meta.name:
        return None
    return AuthorizationPolicy(
        meta, action, provider_name, dry_run, attachment, tuple(rules), sink.file, top.line
    )


def policies_by_action(
    policies: Sequence[AuthorizationPolicy],
) -> dict[Action, tuple[AuthorizationPolicy, ...]]:
    grouped: dict[Action, list[AuthorizationPolicy]] = {action: [] for action in Action}
    for policy in policies:
        grouped[policy.action].append(policy)
    return {action: tuple(found) for action, found in grouped.items()}
