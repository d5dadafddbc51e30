"""Find the limit that applies to one request descriptor (envoyproxy/ratelimit's GetLimit).

Each request entry descends one level of the domain's tree. At each level the
entry matches, in order: the exact key/value, the first wildcard value (config
order), the key-only default. A limit applies only at the level of the request's
last entry; a request deeper than the tree, or one stopping at a node without a
limit, gets no limit. A matched key/value with no limit and no children thus
whitelists, even when a key-only default exists beside it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.ratelimit.model import (
    DescriptorNode,
    DescriptorRequest,
    RateLimit,
    RateLimitConfig,
)
from services.ratelimit.windows import descriptor_key


@dataclass(frozen=True, slots=True)
class Match:
    """A limit found for a descriptor, with the names it is counted and reported under."""

    limit: RateLimit
    counter: str
    stat_key: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def find_limit(config: RateLimitConfig, domain: str, descriptor: DescriptorRequest) -> Match | None:
    """The limit for ``descriptor`` in ``domain``, or None when nothing limits it."""
    compiled = config.domains.get(domain)
    if compiled is None:
        return None
    entries = descriptor.entries
    if descriptor.override is not None:
        override = descriptor.override
        limit = RateLimit(override.requests_per_unit, override.unit)
        # Values stay out of the stat name: they come from the request, unbounded.
        stat = ".".join([domain, *(k for k, _ in entries)]) + ":override"
        return Match(limit, descriptor_key(domain, entries), stat)
    if not entries:
        return None
    level = compiled.root
    path: list[DescriptorNode] = []
    last = len(entries) - 1
    for depth, (key, value) in enumerate(entries):
        node = level.exact.get((key, value))
        if node is None:
            for candidate in level.wildcards.get(key, ()):
                assert candidate.wildcard is not None
                if candidate.wildcard.matches(value):
                    node = candidate
                    break
        if node is None:
            node = level.defaults.get(key)
        if node is None:
            return None
        path.append(node)
        if depth == last:
            if node.limit is None:
                return None
            return _match(domain, entries, path, node.limit)
        if node.children.empty:
            return None
        level = node.children
    return None  # pragma: no cover - the loop always returns at the last entry


def _match(
    domain: str,
    entries: tuple[tuple[str, str], ...],
    path: list[DescriptorNode],
    limit: RateLimit,
) -> Match:
    last = path[-1]
    counted = [
        (key, node.value if node.share_threshold else value)
        for node, (key, value) in zip(path, entries, strict=True)
    ]
    stat_key = last.stat_key
    if last.stat_uses_values:
        detailed = last.detailed_metric
        stats = [domain]
        for node, (key, value) in zip(path, entries, strict=True):
            stats.append(f"{key}_{value}" if detailed or node.value_to_metric else node.stat_name)
        stat_key = ".".join(stats)
    return Match(limit, descriptor_key(domain, counted), stat_key, last.metadata)
