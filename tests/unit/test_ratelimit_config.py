"""Validation of envoyproxy/ratelimit config files: the same rejections, with file, line, field."""

import pytest

from services.ratelimit.config import describe_config
from services.ratelimit.model import Unit
from tests.unit.ratelimit_helpers import compile_texts, compiled

REJECTED = {
    "empty domain": (
        """
        domain: ""
        descriptors: []
        """,
        "f0.yaml:2: domain: config file cannot have empty domain",
    ),
    "descriptor without key": (
        """
        domain: d
        descriptors:
          - value: v
            rate_limit: {unit: second, requests_per_unit: 1}
        """,
        "f0.yaml:4: descriptors[0].key: descriptor has empty key",
    ),
    "duplicate composite key": (
        """
        domain: test-domain
        descriptors:
          - key: key1
            value: value1
          - key: key1
            value: value1
        """,
        "f0.yaml:6: descriptors[1].key: duplicate descriptor composite key "
        "'test-domain.key1_value1' (already defined at line 4)",
    ),
    "nested duplicate": (
        """
        domain: d
        descriptors:
          - key: a
            descriptors:
              - key: b
              - key: b
        """,
        "f0.yaml:7: descriptors[0].descriptors[1].key: duplicate descriptor composite key 'd.a.b'",
    ),
    "invalid unit": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: foo, requests_per_unit: 5}
        """,
        "f0.yaml:5: descriptors[0].rate_limit.unit: invalid rate limit unit 'foo'",
    ),
    "missing unit": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              requests_per_unit: 5
        """,
        "f0.yaml:6: descriptors[0].rate_limit.unit: invalid rate limit unit ''",
    ),
    "unlimited with unit": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {unlimited: true, unit: second}
        """,
        "descriptors[0].rate_limit.unit: should not specify rate limit unit when unlimited",
    ),
    "replaces itself": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              name: self
              unit: second
              replaces: [{name: self}]
        """,
        "descriptors[0].rate_limit.replaces[0].name: "
        "replaces should not contain name of same descriptor",
    ),
    "empty replaces entry": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unit: second
              replaces: [{name: ""}]
        """,
        "should not have an empty replaces entry",
    ),
    "misspelled rate_limit": (
        """
        domain: d
        descriptors:
          - key: k
            ratelimit: {unit: second}
        """,
        "f0.yaml:5: descriptors[0].ratelimit: unknown key 'ratelimit' in descriptor",
    ),
    "misspelled requests_per_unit": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, requestsperunit: 5}
        """,
        "descriptors[0].rate_limit.requestsperunit: unknown key 'requestsperunit' in rate_limit",
    ),
    "non-string key": (
        """
        domain: d
        0.25: test-domain
        """,
        "f0.yaml:3: 0.25: key is not a string: 0.25",
    ),
    "descriptors of non-mappings": (
        """
        domain: d
        descriptors: [a, b, c]
        """,
        "f0.yaml:3: descriptors[0]: descriptor must be a mapping, got a string ('a')",
    ),
    "float requests_per_unit": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 5.5}
        """,
        "requests_per_unit: must be an integer, got a number (5.5)",
    ),
    "negative requests_per_unit": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: -1}
        """,
        "requests_per_unit: must be at least 0, got -1",
    ),
    "share_threshold without wildcard": (
        """
        domain: d
        descriptors:
          - key: k
            value: plain
            share_threshold: true
            rate_limit: {unit: second, requests_per_unit: 1}
        """,
        "share_threshold can only be used with wildcard values",
    ),
    "metadata not a mapping": (
        """
        domain: d
        descriptors:
          - key: k
            metadata: [1, 2]
        """,
        "descriptors[0].metadata: must be a mapping, got a list",
    ),
    "shadow_mode not a boolean": (
        """
        domain: d
        descriptors:
          - key: k
            shadow_mode: "yes"
        """,
        "descriptors[0].shadow_mode: must be true or false, got a string ('yes')",
    ),
    "counting neither exact nor leased": (
        """
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: minute, requests_per_unit: 5, counting: lazy}
        """,
        "f0.yaml:5: descriptors[0].rate_limit.counting: 'lazy' must be exact or leased",
    ),
}


class TestCounting:
    def test_counting_leased_is_mixerless_s_extension(self) -> None:
        """rate_limit.counting: leased marks the limit; exact, the default, does not."""
        config = compiled(
            """
            domain: d
            descriptors:
              - {key: a, rate_limit: {unit: minute, requests_per_unit: 5, counting: leased}}
              - {key: b, rate_limit: {unit: minute, requests_per_unit: 5}}
            """
        )
        leased = {
            node.key: node.limit.leased
            for node in config.domains["d"].root.nodes()
            if node.limit is not None
        }
        assert leased == {"a": True, "b": False}


class TestRejections:
    @pytest.mark.parametrize("case", list(REJECTED), ids=list(REJECTED))
    def test_rejected_with_location(self, case: str) -> None:
        """Configs envoyproxy/ratelimit rejects are rejected here, naming line and field."""
        text, expected = REJECTED[case]
        _, errors = compile_texts(text)
        assert any(expected in str(error) for error in errors), [str(e) for e in errors]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("domain: 5\n", "f0.yaml:1: domain: must be a string, got a number (5)"),
            (
                "domain: d\ndescriptors: [{key: k, rate_limit: {unit: 5}}]\n",
                "f0.yaml:2: descriptors[0].rate_limit.unit: must be a string, got a number (5)",
            ),
        ],
    )
    def test_wrong_type_is_one_error(self, text: str, expected: str) -> None:
        """A value of the wrong type is reported once, not also as empty or invalid."""
        _, errors = compile_texts(text)
        assert [str(e) for e in errors] == [expected]

    def test_children_of_a_keyless_descriptor_are_checked(self) -> None:
        """A descriptor without key still has its nested descriptors validated."""
        _, errors = compile_texts(
            "domain: d\ndescriptors:\n  - descriptors: [{key: k, rate_limit: {unit: x}}]\n"
        )
        assert len(errors) == 2
        assert "invalid rate limit unit 'x'" in str(errors[1])

    def test_duplicate_domain_across_files(self) -> None:
        """A domain defined in two files is rejected unless merging is on."""
        a = "domain: test-domain\ndescriptors: [{key: a}]\n"
        b = "domain: test-domain\ndescriptors: [{key: b}]\n"
        _, errors = compile_texts(a, b)
        assert [str(e) for e in errors] == [
            "f1.yaml:1: domain: duplicate domain 'test-domain' in config file "
            "(first defined at f0.yaml:1; set --merge-domains to merge them)"
        ]

    def test_merged_domains_combine_descriptors(self) -> None:
        """With merging on, two files of one domain contribute descriptors to one tree."""
        a = "domain: d\ndescriptors: [{key: a, rate_limit: {unit: second}}]\n"
        b = "domain: d\ndescriptors: [{key: b, rate_limit: {unit: second}}]\n"
        config, errors = compile_texts(a, b, merge_domains=True)
        assert errors == []
        assert set(config.domains["d"].root.defaults) == {"a", "b"}

    def test_merged_domains_still_reject_duplicates(self) -> None:
        """Merging the same descriptor twice is still a duplicate composite key."""
        text = "domain: d\ndescriptors: [{key: a, value: v}]\n"
        _, errors = compile_texts(text, text, merge_domains=True)
        assert ["duplicate descriptor composite key 'd.a_v'" in str(e) for e in errors] == [True]

    def test_every_error_reported_in_one_pass(self) -> None:
        """Validation collects all errors of a file instead of stopping at the first."""
        _, errors = compile_texts(
            """
            domain: d
            descriptors:
              - key: a
                ratelimit: {}
              - key: a
              - key: b
                rate_limit: {unit: fortnight}
            """
        )
        assert len(errors) == 3

    def test_key_value_and_joined_key_do_not_collide(self) -> None:
        """``key: a_b`` and ``key: a, value: b`` are different descriptors (no ``_`` joining)."""
        compiled(
            """
            domain: d
            descriptors:
              - key: a_b
                rate_limit: {unit: second, requests_per_unit: 1}
              - key: a
                value: b
                rate_limit: {unit: second, requests_per_unit: 2}
            """
        )


class TestAccepted:
    def test_units_are_case_insensitive(self) -> None:
        """``unit: MINUTE`` and ``unit: minute`` both mean a minute."""
        config = compiled(
            """
            domain: d
            descriptors:
              - key: a
                rate_limit: {unit: MINUTE, requests_per_unit: 1}
            """
        )
        limit = config.domains["d"].root.defaults["a"].limit
        assert limit is not None
        assert limit.unit is Unit.MINUTE

    def test_missing_requests_per_unit_is_zero(self) -> None:
        """A rate_limit without requests_per_unit blocks everything, as upstream."""
        config = compiled("domain: d\ndescriptors: [{key: a, rate_limit: {unit: second}}]\n")
        limit = config.domains["d"].root.defaults["a"].limit
        assert limit is not None
        assert limit.requests_per_unit == 0

    def test_numeric_values_are_strings(self) -> None:
        """An unquoted numeric value (``value: 123``) matches the request value "123"."""
        config = compiled("domain: d\ndescriptors: [{key: a, value: 123}]\n")
        assert ("a", "123") in config.domains["d"].root.exact

    def test_describe_lists_every_limit(self) -> None:
        """The debug dump names each rule with its limit, like upstream's /rlconfig."""
        config = compiled(
            """
            domain: d
            descriptors:
              - key: a
                rate_limit: {unit: second, requests_per_unit: 3, name: n}
              - key: a
                value: free
              - key: b
                rate_limit: {unlimited: true}
            """
        )
        assert describe_config(config) == [
            "d.a: unit=SECOND requests_per_unit=3, shadow_mode: false, name: n",
            "d.a_free: no limit (whitelisted)",
            "d.b: unlimited, shadow_mode: false",
        ]
