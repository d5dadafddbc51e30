"""Quotas inside Check: the descriptors a rule builds, and what the quota stage answers."""

from collections.abc import Sequence
from pathlib import Path

import pytest

from services.authz import stages
from services.authz.answer import Denial
from services.authz.model import Effects, HttpRequest
from services.authz.quota import (
    ANONYMOUS,
    Entries,
    QuotaAnswer,
    QuotaRule,
    QuotaUnavailable,
    route_rules,
)
from services.catalog.loader import LoadOptions, load_directory
from services.policy.re2 import full_matcher
from services.xds.ratelimit_policy import method_regex, path_regex

ROOT = Path(__file__).parents[3]
PRODUCT = full_matcher(path_regex(("/product", "/product/*")))
GET = full_matcher(method_regex(("GET",)))


def request(path: str = "/product/1", method: str = "GET", **headers: str) -> HttpRequest:
    return HttpRequest(method=method, path=path, headers=headers)


def rule(**fields: object) -> QuotaRule:
    base: dict[str, object] = {"domain": "public", "policy": "ns/quota"}
    return QuotaRule(**{**base, **fields})  # type: ignore[arg-type]


class FakeCounter:
    """Counts per (domain, entries) with a fixed limit; or fails, like a store that is down."""

    def __init__(self, limit: int = 2, down: bool = False) -> None:
        self.limit, self.down = limit, down
        self.counts: dict[tuple[str, Entries], int] = {}

    async def __call__(self, domain: str, descriptors: Sequence[Entries]) -> QuotaAnswer:
        if self.down:
            raise QuotaUnavailable("down")
        over = False
        for entries in descriptors:
            key = (domain, entries)
            self.counts[key] = self.counts.get(key, 0) + 1
            over = over or self.counts[key] > self.limit
        return QuotaAnswer(over, (("x-ratelimit-remaining", "n"),))


class TestDescriptor:
    def test_subject_comes_from_the_checks_metadata_else_anonymous(self) -> None:
        """countBy subject: the 'subject' Envoy would read from ext_authz metadata."""
        counted = rule(path=PRODUCT, count_key="user", count_from="subject")
        assert counted.descriptor(request(), {"subject": "alice"}, "") == (
            ("policy", "ns/quota"),
            ("match", "yes"),
            ("user", "alice"),
        )
        assert counted.descriptor(request(), None, "")[-1] == ("user", ANONYMOUS)  # type: ignore[index]

    def test_claim_client_address_and_header(self) -> None:
        """claim_text, remote_address and request_headers entries, as the route actions send."""
        metadata = {"claim_text": {"tenant": "acme"}}
        claim = rule(count_key="claim", count_from="claim", count_name="tenant")
        assert claim.descriptor(request(), metadata, "")[-1] == ("claim", "acme")  # type: ignore[index]
        client = rule(count_key="client", count_from="clientAddress")
        assert client.descriptor(request(), None, "203.0.113.9") == (
            ("policy", "ns/quota"),
            ("remote_address", "203.0.113.9"),
        )
        header = rule(count_key="header", count_from="header", count_name="x-api-key")
        assert header.descriptor(request(**{"x-api-key": "k1"}), None, "")[-1] == ("header", "k1")  # type: ignore[index]

    def test_no_descriptor_when_the_match_or_the_counted_header_is_missing(self) -> None:
        """header_value_match false, or request_headers absent: Envoy sends nothing."""
        matched = rule(path=PRODUCT, method=GET, headers=(("x-env", "prod"),))
        assert matched.descriptor(request(**{"x-env": "prod"}), None, "") is not None
        assert matched.descriptor(request("/productx", **{"x-env": "prod"}), None, "") is None
        assert matched.descriptor(request(method="POST", **{"x-env": "prod"}), None, "") is None
        assert matched.descriptor(request(), None, "") is None
        header = rule(count_key="header", count_from="header", count_name="x-api-key")
        assert header.descriptor(request(), None, "") is None

    def test_path_match_allows_a_query_as_envoys_regex_does(self) -> None:
        """The :path regex of the route actions, with a query string, still matches."""
        assert rule(path=PRODUCT).matches(request("/product/7?color=red"))
        assert not rule(path=PRODUCT).matches(request("/products"))


class TestStage:
    async def test_over_quota_is_a_429_with_the_counters_headers(self) -> None:
        """Within the limit the answer carries headers; over it, 429 with them."""
        counter = FakeCounter(limit=1)
        rules = (rule(count_key="user", count_from="subject"),)
        first = await stages.quota(rules, request(), Effects(), "", counter)
        assert first == QuotaAnswer(False, (("x-ratelimit-remaining", "n"),))
        second = await stages.quota(rules, request(), Effects(), "", counter)
        assert isinstance(second, Denial) and second.status == 429
        assert second.headers == (("x-ratelimit-remaining", "n"),)

    async def test_counts_the_headers_authz_set_upstream(self) -> None:
        """A header the Check sets upstream (x-user-id from a claim) is what is counted."""
        counter = FakeCounter()
        rules = (rule(count_key="header", count_from="header", count_name="x-user-id"),)
        effects = Effects(upstream=(("x-user-id", "alice"),))
        await stages.quota(rules, request(**{"x-user-id": "forged"}), effects, "", counter)
        assert [entries[-1] for _, entries in counter.counts] == [("header", "alice")]

    async def test_a_header_match_reads_the_headers_authz_set_upstream(self) -> None:
        """match.headers sees the Check's header changes too, as the filter after it would."""
        counter = FakeCounter()
        rules = (rule(headers=(("x-tier", "gold"),)),)
        effects = Effects(upstream=(("x-tier", "gold"),))
        await stages.quota(rules, request(), effects, "", counter)
        assert len(counter.counts) == 1
        await stages.quota(
            rules, request(**{"x-tier": "gold"}), Effects(upstream_remove=("x-tier",)), "", counter
        )
        assert sum(counter.counts.values()) == 1  # removed upstream: not matched

    @pytest.mark.parametrize(("deny", "expected"), [(True, 500), (False, 200)])
    async def test_store_failure_follows_the_rules_failure_mode(
        self, deny: bool, expected: int
    ) -> None:
        """onStoreFailure deny answers as Envoy's filter does (500); allow lets it through."""
        rules = (rule(deny_on_store_failure=deny),)
        found = await stages.quota(rules, request(), Effects(), "", FakeCounter(down=True))
        status = found.status if isinstance(found, Denial) else 200
        assert status == expected

    async def test_nothing_counted_when_no_rule_matches(self) -> None:
        """No descriptor, no call: a request outside every policy's match is not counted."""
        counter = FakeCounter(down=True)
        found = await stages.quota((rule(path=PRODUCT),), request("/api"), Effects(), "", counter)
        assert found == QuotaAnswer(False)


class TestCatalog:
    def test_the_demo_quota_is_counted_in_check_on_the_products_route_only(self) -> None:
        """policies/: the products route of 'public' counts product-per-user by subject."""
        policy_set = load_directory(ROOT / "policies", LoadOptions())
        quotas = policy_set.authz.quotas
        context = {"gateway": "public", "route": "products"}
        [found] = route_rules(quotas, context)
        assert found.descriptor(request(), {"subject": "bob"}, "") == (
            ("policy", "istio-system/product-per-user"),
            ("match", "yes"),
            ("user", "bob"),
        )
        assert found.deny_on_store_failure
        assert route_rules(quotas, {"gateway": "public", "route": "default"}) == ()
        assert route_rules(quotas, {"gateway": "public"}) == ()  # hand-configured, no route
