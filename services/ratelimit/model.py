"""Plain data for the rate limit service: compiled config, requests and decisions.

Nothing here does I/O. ``config`` builds the compiled tree, ``match`` walks it,
``limiter`` turns counts into decisions; the servicer converts to and from protobuf.
"""

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

UINT32_MAX = 4_294_967_295


class Unit(enum.Enum):
    """A rate limit window. Values are (name, seconds, RateLimitResponse.RateLimit.Unit number)."""

    SECOND = ("second", 1, 1)
    MINUTE = ("minute", 60, 2)
    HOUR = ("hour", 3_600, 3)
    DAY = ("day", 86_400, 4)
    WEEK = ("week", 604_800, 7)
    MONTH = ("month", 2_592_000, 5)  # 30 days, as envoyproxy/ratelimit
    YEAR = ("year", 31_536_000, 6)  # 365 days

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def seconds(self) -> int:
        return self.value[1]

    @property
    def proto(self) -> int:
        return self.value[2]

    @classmethod
    def parse(cls, text: str) -> "Unit | None":
        return _UNITS_BY_NAME.get(text.lower())

    @classmethod
    def from_proto(cls, number: int) -> "Unit | None":
        return _UNITS_BY_PROTO.get(number)


_UNITS_BY_NAME = {u.label: u for u in Unit}
_UNITS_BY_PROTO = {u.proto: u for u in Unit}


class Code(enum.IntEnum):
    """RateLimitResponse.Code numbers."""

    UNKNOWN = 0
    OK = 1
    OVER_LIMIT = 2


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit: ``requests_per_unit`` per ``unit``, or ``unlimited``."""

    requests_per_unit: int
    unit: Unit
    name: str = ""
    unlimited: bool = False
    shadow_mode: bool = False
    quota_mode: bool = False
    replaces: frozenset[str] = frozenset()
    leased: bool = False  # counted from leases where a shared store allows (counting.py)


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A descriptor value with ``*`` in it; each ``*`` matches any run of characters."""

    pattern: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> "Wildcard":
        parts = (re.escape(part) for part in pattern.split("*"))
        return cls(pattern, re.compile(".*".join(parts), re.DOTALL))

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None


@dataclass(eq=False, slots=True)
class DescriptorNode:
    """A compiled descriptor: one level of the tree, with its limit and children."""

    key: str
    value: str
    line: int
    limit: RateLimit | None = None
    wildcard: Wildcard | None = None
    share_threshold: bool = False
    detailed_metric: bool = False
    value_to_metric: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    children: "DescriptorLevel" = field(default_factory=lambda: DescriptorLevel())
    # Filled at compile time: the rule's stat key, and whether a request's values must
    # go into it (detailed_metric here, or value_to_metric here or above).
    stat_key: str = ""
    stat_uses_values: bool = False

    @property
    def stat_name(self) -> str:
        """The name envoyproxy/ratelimit gives this node in stat keys: ``key`` or ``key_value``."""
        return f"{self.key}_{self.value}" if self.value else self.key

    @property
    def whitelists(self) -> bool:
        """A key/value with neither limit nor children: matching it means "no limit"."""
        return self.limit is None and self.children.empty


@dataclass(slots=True)
class DescriptorLevel:
    """The descriptors at one depth, indexed the way lookups walk them.

    Per request entry the precedence is: exact key/value, then the first wildcard
    value (config order) that matches, then the key-only default.
    """

    exact: dict[tuple[str, str], DescriptorNode] = field(default_factory=dict)
    wildcards: dict[str, list[DescriptorNode]] = field(default_factory=dict)
    defaults: dict[str, DescriptorNode] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.exact or self.wildcards or self.defaults)

    def nodes(self) -> list[DescriptorNode]:
        """Every node at this level, in a stable order (for dumps)."""
        found = list(self.exact.values()) + list(self.defaults.values())
        for nodes in self.wildcards.values():
            found.extend(nodes)
        return sorted(found, key=lambda n: n.line)


@dataclass(slots=True)
class Domain:
    """A rate limit domain and where it was defined."""

    name: str
    file: str
    line: int
    root: DescriptorLevel = field(default_factory=DescriptorLevel)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Every loaded domain, ready for lookups."""

    domains: Mapping[str, Domain] = field(default_factory=dict)


# --- requests and answers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """``RateLimitDescriptor.limit``: a limit supplied by the caller for this descriptor."""

    requests_per_unit: int
    unit: Unit


@dataclass(frozen=True, slots=True)
class DescriptorRequest:
    """One descriptor of a request: its entries, an optional override and addend."""

    entries: tuple[tuple[str, str], ...]
    override: LimitOverride | None = None
    hits_addend: int | None = None


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """A ShouldRateLimit call."""

    domain: str
    descriptors: tuple[DescriptorRequest, ...]
    hits_addend: int = 0


@dataclass(frozen=True, slots=True)
class DescriptorStatus:
    """The answer for one descriptor, as RateLimitResponse.DescriptorStatus carries it."""

    code: Code
    limit: RateLimit | None = None
    remaining: int = 0
    reset_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class LimitResult:
    """The answer to a ShouldRateLimit call."""

    overall: Code
    statuses: tuple[DescriptorStatus, ...]
    headers: tuple[tuple[str, str], ...] = ()
    metadata: Mapping[str, Any] | None = None
