"""Which limit applies to a descriptor: precedence, depth, wildcards, keys and stat names."""

from services.ratelimit.match import find_limit
from services.ratelimit.model import DescriptorRequest, LimitOverride, Unit
from tests.unit.ratelimit_helpers import compiled

CONFIG = compiled(
    """
    domain: d
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5}
      - key: user
        value: alice
        rate_limit: {unit: minute, requests_per_unit: 100}
      - key: user
        value: monitor
      - key: user
        value: svc-*
        rate_limit: {unit: second, requests_per_unit: 50}
      - key: user
        value: "*-bot"
        rate_limit: {unit: second, requests_per_unit: 7}
      - key: path
        value: /api/*/items/*
        rate_limit: {unit: second, requests_per_unit: 3}
      - key: files
        value: /download/*
        share_threshold: true
        rate_limit: {unit: hour, requests_per_unit: 10}
      - key: route
        value: product
        descriptors:
          - key: user
            rate_limit: {unit: minute, requests_per_unit: 100}
            detailed_metric: true
      - key: tenant
        value_to_metric: true
        descriptors:
          - key: user
            rate_limit: {unit: minute, requests_per_unit: 9}
    """
)


def limit_of(*entries: tuple[str, str], domain: str = "d") -> int | None:
    match = find_limit(CONFIG, domain, DescriptorRequest(entries))
    return None if match is None else match.limit.requests_per_unit


class TestPrecedence:
    def test_exact_value_beats_default(self) -> None:
        """A key/value entry wins over the key-only default."""
        assert limit_of(("user", "alice")) == 100

    def test_default_applies_to_any_value(self) -> None:
        """A key without value gives every value the default limit."""
        assert limit_of(("user", "bob")) == 5

    def test_value_without_limit_whitelists(self) -> None:
        """A matched key/value with no limit and no children means no limit, not the default."""
        assert limit_of(("user", "monitor")) is None

    def test_wildcard_beats_default(self) -> None:
        """A matching wildcard value comes before the key-only default."""
        assert limit_of(("user", "svc-billing")) == 50

    def test_wildcard_anywhere_in_value(self) -> None:
        """``*`` may lead, trail, or appear several times, each matching any run."""
        assert limit_of(("user", "crawler-bot")) == 7
        assert limit_of(("path", "/api/v1/items/42")) == 3
        assert limit_of(("path", "/api/v1/things/42")) is None

    def test_wildcard_matches_the_value_not_the_joined_key(self) -> None:
        """Wildcards match per entry: key ``user_svc`` + value ``x`` is not ``user``+``svc-*``."""
        assert limit_of(("user_svc", "-x")) is None

    def test_unknown_domain_has_no_limit(self) -> None:
        """An unknown domain matches nothing."""
        assert limit_of(("user", "bob"), domain="other") is None


class TestDepth:
    def test_nested_limit_at_last_entry(self) -> None:
        """A limit applies at the level of the request's last entry."""
        assert limit_of(("route", "product"), ("user", "bob")) == 100

    def test_placeholder_level_has_no_limit(self) -> None:
        """Stopping at a level without a limit gives no limit."""
        assert limit_of(("route", "product")) is None

    def test_deeper_request_than_config_has_no_limit(self) -> None:
        """More entries than the tree is deep gives no limit."""
        assert limit_of(("user", "bob"), ("extra", "x")) is None


class TestCounterKeys:
    def test_each_default_value_counts_separately(self) -> None:
        """Two users matched by one default rule have different counters."""
        a = find_limit(CONFIG, "d", DescriptorRequest((("user", "a"),)))
        b = find_limit(CONFIG, "d", DescriptorRequest((("user", "b"),)))
        assert a is not None and b is not None
        assert a.counter != b.counter

    def test_wildcard_without_share_threshold_counts_per_value(self) -> None:
        """Without share_threshold, each value matching a wildcard has its own counter."""
        a = find_limit(CONFIG, "d", DescriptorRequest((("user", "svc-a"),)))
        b = find_limit(CONFIG, "d", DescriptorRequest((("user", "svc-b"),)))
        assert a is not None and b is not None
        assert a.counter != b.counter

    def test_share_threshold_shares_one_counter(self) -> None:
        """With share_threshold, all values matching the wildcard share one counter."""
        a = find_limit(CONFIG, "d", DescriptorRequest((("files", "/download/a"),)))
        b = find_limit(CONFIG, "d", DescriptorRequest((("files", "/download/b"),)))
        assert a is not None and b is not None
        assert a.counter == b.counter


class TestStatKeys:
    def test_stat_key_uses_config_names(self) -> None:
        """Stats name the rule (``d.user``), not the runtime value, by default."""
        match = find_limit(CONFIG, "d", DescriptorRequest((("user", "bob"),)))
        assert match is not None and match.stat_key == "d.user"

    def test_wildcard_stat_key_keeps_pattern(self) -> None:
        """A wildcard rule's stat key keeps its pattern (``d.user_svc-*``)."""
        match = find_limit(CONFIG, "d", DescriptorRequest((("user", "svc-x"),)))
        assert match is not None and match.stat_key == "d.user_svc-*"

    def test_detailed_metric_includes_values(self) -> None:
        """detailed_metric puts every runtime value into the stat key."""
        match = find_limit(CONFIG, "d", DescriptorRequest((("route", "product"), ("user", "bob"))))
        assert match is not None and match.stat_key == "d.route_product.user_bob"

    def test_value_to_metric_includes_that_level(self) -> None:
        """value_to_metric puts that level's runtime value into the stat key."""
        match = find_limit(CONFIG, "d", DescriptorRequest((("tenant", "acme"), ("user", "bob"))))
        assert match is not None and match.stat_key == "d.tenant_acme.user"


class TestOverride:
    def test_override_applies_without_config_match(self) -> None:
        """A request-supplied limit applies even when no rule matches, if the domain exists."""
        descriptor = DescriptorRequest((("nothing", "here"),), LimitOverride(42, Unit.HOUR))
        match = find_limit(CONFIG, "d", descriptor)
        assert match is not None
        assert (match.limit.requests_per_unit, match.limit.unit) == (42, Unit.HOUR)

    def test_override_stat_key_leaves_out_values(self) -> None:
        """Request-supplied limits are reported per key, never per (unbounded) value."""
        descriptor = DescriptorRequest((("user", "u-123"),), LimitOverride(4, Unit.HOUR))
        match = find_limit(CONFIG, "d", descriptor)
        assert match is not None and match.stat_key == "d.user:override"

    def test_override_in_unknown_domain_has_no_limit(self) -> None:
        """A request-supplied limit in an unknown domain gives no limit."""
        descriptor = DescriptorRequest((("k", "v"),), LimitOverride(42, Unit.HOUR))
        assert find_limit(CONFIG, "nope", descriptor) is None
