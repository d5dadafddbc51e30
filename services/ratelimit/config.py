"""envoyproxy/ratelimit config files: validate strictly, compile into descriptor trees.

The accepted shape and the rejections follow envoyproxy/ratelimit's
``config_impl.go``; messages keep its wording where it has one, prefixed with
``file:line: field:``. Deliberate differences:

* keys are checked per level (``unit`` under a descriptor is an error, not ignored);
* descriptors are indexed by ``(key, value)`` pairs, never by ``key_value`` strings, so
  ``key: a_b`` and ``key: a, value: b`` are different descriptors.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from services.policy.errors import ErrorSink
from services.policy.fields import Fields
from services.ratelimit.model import (
    UINT32_MAX,
    DescriptorLevel,
    DescriptorNode,
    Domain,
    RateLimit,
    RateLimitConfig,
    Unit,
    Wildcard,
)

TOP_KEYS = frozenset({"domain", "descriptors"})
DESCRIPTOR_KEYS = frozenset(
    {
        "key",
        "value",
        "rate_limit",
        "descriptors",
        "shadow_mode",
        "quota_mode",
        "detailed_metric",
        "value_to_metric",
        "share_threshold",
        "metadata",
    }
)
# ``counting`` is mixerless's own (exact | leased; services/ratelimit/counting.py);
# the others are envoyproxy/ratelimit's.
RATE_LIMIT_KEYS = frozenset(
    {"unit", "requests_per_unit", "unlimited", "name", "replaces", "counting"}
)
COUNTING_MODES = ("exact", "leased")
UNIT_NAMES = ", ".join(u.label for u in Unit)


def is_ratelimit_document(body: Any) -> bool:
    """An envoyproxy/ratelimit config is recognised by its shape: ``domain`` and no ``kind``."""
    return isinstance(body, dict) and "domain" in body and "kind" not in body


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """One ratelimit config document and the sink its errors go to."""

    body: Any
    line: int
    sink: ErrorSink


def compile_config(documents: Iterable[ConfigDocument], *, merge_domains: bool) -> RateLimitConfig:
    """Compile every document into one config; problems go to each document's sink.

    A domain defined twice is an error unless ``merge_domains`` is on; merged
    descriptors still may not repeat a key/value at one level.
    """
    domains: dict[str, Domain] = {}
    for document in documents:
        fields = Fields(
            document.body,
            path="",
            sink=document.sink,
            line=document.line,
            what="rate limit config",
            allowed=TOP_KEYS,
        )
        name = fields.text("domain")
        if not name:
            if fields.raw("domain") in (None, ""):  # a wrong type was reported already
                fields.error("domain", "config file cannot have empty domain")
            continue
        domain = domains.get(name)
        if domain is None:
            domain = Domain(name, document.sink.file, fields.line_of("domain"))
            domains[name] = domain
        elif not merge_domains:
            fields.error(
                "domain",
                f"duplicate domain '{name}' in config file "
                f"(first defined at {domain.file}:{domain.line}; "
                "set --merge-domains to merge them)",
            )
            continue
        _load_level(fields, domain.root, f"{name}.")
    return RateLimitConfig(domains)


def _load_level(
    parent: Fields, level: DescriptorLevel, composite: str, values_above: bool = False
) -> None:
    for fields in parent.children("descriptors", what="descriptor", allowed=DESCRIPTOR_KEYS):
        node = _load_descriptor(fields)
        if node is None:
            if fields.valid:  # still report what is wrong further down
                _load_level(fields, DescriptorLevel(), f"{composite}?.")
            continue
        full_key = composite + node.stat_name
        existing = _find_same(level, node)
        if existing is not None:
            fields.error(
                "key",
                f"duplicate descriptor composite key '{full_key}' "
                f"(already defined at line {existing.line})",
            )
            continue
        node.stat_key = full_key
        node.stat_uses_values = values_above or node.value_to_metric or node.detailed_metric
        _load_level(fields, node.children, full_key + ".", values_above or node.value_to_metric)
        if node.wildcard is not None:
            level.wildcards.setdefault(node.key, []).append(node)
        elif node.value:
            level.exact[(node.key, node.value)] = node
        else:
            level.defaults[node.key] = node


def _find_same(level: DescriptorLevel, node: DescriptorNode) -> DescriptorNode | None:
    if node.wildcard is not None:
        for other in level.wildcards.get(node.key, ()):
            if other.value == node.value:
                return other
        return None
    if node.value:
        return level.exact.get((node.key, node.value))
    return level.defaults.get(node.key)


def _load_descriptor(fields: Fields) -> DescriptorNode | None:
    if not fields.valid:
        return None
    key = fields.text("key")
    raw_value = fields.raw("value")
    if isinstance(raw_value, int) and not isinstance(raw_value, bool):
        value = str(raw_value)  # unquoted numbers are values too, as in envoyproxy/ratelimit
    else:
        value = fields.text("value")
    shadow_mode = fields.flag("shadow_mode")
    quota_mode = fields.flag("quota_mode")
    share_threshold = fields.flag("share_threshold")
    wildcard = Wildcard.compile(value) if "*" in value else None
    if share_threshold and wildcard is None:
        fields.error(
            "share_threshold",
            "share_threshold can only be used with wildcard values (a value containing '*')",
        )
    limit = _load_rate_limit(fields, shadow_mode=shadow_mode, quota_mode=quota_mode)
    metadata = _load_metadata(fields)
    node = DescriptorNode(
        key=key,
        value=value,
        line=fields.line,
        limit=limit,
        wildcard=wildcard,
        share_threshold=share_threshold,
        detailed_metric=fields.flag("detailed_metric"),
        value_to_metric=fields.flag("value_to_metric"),
        metadata=metadata,
    )
    if not key:
        if fields.raw("key") in (None, ""):  # a wrong-typed key was reported already
            fields.missing("key", "descriptor has empty key")
        return None
    return node


def _load_rate_limit(fields: Fields, *, shadow_mode: bool, quota_mode: bool) -> RateLimit | None:
    spec = fields.child("rate_limit", what="rate_limit", allowed=RATE_LIMIT_KEYS)
    if spec is None or not spec.valid:
        return None
    unlimited = spec.flag("unlimited")
    name = spec.text("name")
    unit = Unit.SECOND
    if unlimited:
        if "unit" in spec:
            spec.error("unit", "should not specify rate limit unit when unlimited")
    else:
        unit_text = spec.text("unit")
        parsed = Unit.parse(unit_text)
        if parsed is not None:
            unit = parsed
        elif isinstance(spec.raw("unit", ""), str):  # a wrong type was reported already
            message = f"invalid rate limit unit '{unit_text}' (expected one of: {UNIT_NAMES})"
            if "unit" in spec:
                spec.error("unit", message)
            else:
                spec.missing("unit", message)
    counting = spec.text("counting", default="exact")
    if counting not in COUNTING_MODES:
        spec.error("counting", f"'{counting}' must be exact or leased")
    replaces: set[str] = set()
    for entry in spec.children("replaces", what="replaces entry", allowed={"name"}):
        replaced = entry.text("name")
        if not replaced:
            entry.error("name", "should not have an empty replaces entry")
        elif replaced == name:
            entry.error("name", "replaces should not contain name of same descriptor")
        else:
            replaces.add(replaced)
    return RateLimit(
        requests_per_unit=spec.integer("requests_per_unit", minimum=0, maximum=UINT32_MAX),
        unit=unit,
        name=name,
        unlimited=unlimited,
        shadow_mode=shadow_mode,
        quota_mode=quota_mode,
        replaces=frozenset(replaces),
        leased=counting == "leased",
    )


def _load_metadata(fields: Fields) -> Mapping[str, Any]:
    raw = fields.mapping("metadata")
    if raw is None:
        return {}
    problems: list[str] = []
    plain = _plain(raw, "", problems)
    for problem in problems:
        fields.error("metadata", f"error parsing metadata: {problem}")
    return plain if not problems else {}


def _plain(value: Any, path: str, problems: list[str]) -> Any:
    """YAML values as JSON-compatible data (for google.protobuf.Struct)."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"key {key!r}{' in ' + path if path else ''} is not a string")
                continue
            result[key] = _plain(item, f"{path}.{key}" if path else key, problems)
        return result
    if isinstance(value, list):
        return [_plain(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    problems.append(f"{path}: unsupported value {value!r}" if path else f"unsupported {value!r}")
    return None


def describe_config(config: RateLimitConfig) -> list[str]:
    """One line per limit, like envoyproxy/ratelimit's ``/rlconfig`` debug page."""
    lines: list[str] = []

    def walk(level: DescriptorLevel, prefix: str) -> None:
        for node in level.nodes():
            name = prefix + node.stat_name
            if node.limit is not None:
                limit = node.limit
                if limit.unlimited:
                    text = "unlimited"
                else:
                    text = f"unit={limit.unit.name} requests_per_unit={limit.requests_per_unit}"
                extras = [f"shadow_mode: {str(limit.shadow_mode).lower()}"]
                if limit.name:
                    extras.append(f"name: {limit.name}")
                if limit.replaces:
                    extras.append(f"replaces: {','.join(sorted(limit.replaces))}")
                if limit.quota_mode:
                    extras.append("quota_mode: true")
                lines.append(f"{name}: {text}, {', '.join(extras)}")
            elif node.whitelists:
                lines.append(f"{name}: no limit (whitelisted)")
            walk(node.children, name + ".")

    for domain in sorted(config.domains.values(), key=lambda d: d.name):
        walk(domain.root, domain.name + ".")
    return lines
