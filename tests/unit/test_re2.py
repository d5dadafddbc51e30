"""Regexes we emit into Envoy config are compiled with RE2 exactly as Envoy compiles them."""

import re
from pathlib import Path

import pytest

from services.catalog.loader import LoadOptions, PolicySet, load_directory
from services.policy.errors import PolicyLoadError
from services.policy.re2 import ENVOY_MAX_PROGRAM_SIZE, check_re2, re2_error
from services.xds.ratelimit_policy import path_regex

# (a|b|...|z){50}: valid RE2, but its program is far over Envoy's default limit of 100.
HUGE = "(" + "|".join("abcdefghijklmnopqrstuvwxyz") + "){50}"

GATEWAY = """\
apiVersion: mixerless.io/v1alpha1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  listeners: [{name: http, port: 10000}]
  routes:
  - name: products
    match: {prefix: /product}
    backend: {endpoints: ["127.0.0.1:9000"]}
  - name: orders
    match:
      regex: ORDERS
      headers:
      - {name: x-tenant, regex: TENANT}
    backend: {endpoints: ["127.0.0.1:9001"]}
"""
ORDERS_LINE = 12  # the line of "regex: ORDERS" in GATEWAY
TENANT_LINE = 14  # the line of the x-tenant header match


def gateway(tmp_path: Path, orders: str, tenant: str = "^[a-z]+$") -> Path:
    """Write GATEWAY with the two regexes filled in (single-quoted YAML scalars)."""
    assert GATEWAY.splitlines()[ORDERS_LINE - 1].strip() == "regex: ORDERS"
    text = GATEWAY.replace("ORDERS", f"'{orders}'").replace("TENANT", f"'{tenant}'")
    (tmp_path / "gateway.yaml").write_text(text)
    return tmp_path


def load(tmp_path: Path, orders: str, tenant: str = "^[a-z]+$") -> PolicySet:
    return load_directory(gateway(tmp_path, orders, tenant), LoadOptions())


def errors(tmp_path: Path, orders: str, tenant: str = "^[a-z]+$") -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load(tmp_path, orders, tenant)
    return [str(e).replace(f"{tmp_path}/", "") for e in info.value.errors]


class TestAccepted:
    @pytest.mark.parametrize(
        "pattern",
        [r"\z", r"^/api/.*\z", r"\p{L}", r"^/\p{L}+$", "(?i)abc", "[[:alpha:]]", r"\Q.*\E"],
    )
    def test_valid_re2(self, pattern: str) -> None:
        """RE2 syntax (including what Python's re lacks: \\z, \\p{..}, \\Q..\\E) is accepted."""
        assert re2_error(pattern) is None
        check_re2(pattern)

    @pytest.mark.parametrize("pattern", [r"\z", r"\p{L}", r"\Q.*\E", "(?U)a+"])
    def test_not_judged_by_python_re(self, pattern: str) -> None:
        """Patterns Python's re refuses are judged by RE2 alone."""
        with pytest.raises(re.error):
            re.compile(pattern)
        assert re2_error(pattern) is None


class TestRejected:
    @pytest.mark.parametrize(
        ("pattern", "reason"),
        [
            (r"\Z", r"invalid escape sequence: \Z"),
            ("a{1001}", "invalid repetition size: {1001}"),
            (r"(a)\1", r"invalid escape sequence: \1"),
            ("(?<=a)b", "invalid perl operator: (?<="),
            ("(?=a)", "invalid perl operator: (?="),
            ("(", "missing ): ("),
            ("[z-a]", "invalid character class range: z-a"),
        ],
    )
    def test_re2_refuses(self, pattern: str, reason: str) -> None:
        """What RE2 cannot parse is refused with RE2's own error text."""
        assert re2_error(pattern) == f"invalid regex '{pattern}': RE2 refuses it: {reason}"
        with pytest.raises(ValueError, match=re.escape(reason)):
            check_re2(pattern)

    def test_program_size_over_envoy_default(self) -> None:
        """A regex whose RE2 program size exceeds 100 is refused, naming the size, as Envoy does."""
        message = re2_error(HUGE)
        assert message is not None
        size = int(message.split("RE2 program size of ")[1].split()[0])
        assert size > ENVOY_MAX_PROGRAM_SIZE == 100
        assert f"RE2 program size of {size} > max program size of 100" in message
        assert re2_error(HUGE, max_program_size=size) is None

    def test_compiled_as_latin1_like_envoy(self) -> None:
        """Envoy 1.40 compiles as Latin-1: \\x{100} is refused (UTF-8 RE2 would accept it)."""
        assert re2_error(r"\x{100}") == (
            r"invalid regex '\x{100}': RE2 refuses it: invalid escape sequence: \x{100"
        )
        assert re2_error(r"\x{FF}") is None

    def test_error_line_stays_one_line(self) -> None:
        """A newline in the pattern is escaped so the error stays on one line."""
        message = re2_error("a\nb(")
        assert message is not None and "\n" not in message
        assert message.startswith(r"invalid regex 'a\nb(': RE2 refuses it: missing ): ")


class TestGatewayDocument:
    def test_rejected_regex_names_file_line_and_field(self, tmp_path: Path) -> None:
        """A route regex RE2 refuses fails the load as file:line: field: RE2's error."""
        found = errors(tmp_path, r"^/orders\Z")
        assert found == [
            f"gateway.yaml:{ORDERS_LINE}: spec.routes[1].match.regex: "
            r"invalid regex '^/orders\Z': RE2 refuses it: invalid escape sequence: \Z"
        ]

    def test_repetition_over_1000_names_file_line_and_field(self, tmp_path: Path) -> None:
        """a{1001}, which Envoy's RE2 refuses, fails the load at the regex's file and line."""
        found = errors(tmp_path, "^/a{1001}$")
        assert found == [
            f"gateway.yaml:{ORDERS_LINE}: spec.routes[1].match.regex: "
            "invalid regex '^/a{1001}$': RE2 refuses it: invalid repetition size: {1001}"
        ]

    def test_all_regex_errors_reported(self, tmp_path: Path) -> None:
        """A bad path regex and a bad header regex are both reported, each at its own line."""
        found = errors(tmp_path, "^/orders/(?<id>[0-9]+)(?=/)", HUGE)
        assert len(found) == 2, found
        assert found[0].startswith(f"gateway.yaml:{ORDERS_LINE}: spec.routes[1].match.regex: ")
        assert "invalid perl operator: (?=" in found[0]
        assert found[1].startswith(
            f"gateway.yaml:{TENANT_LINE}: spec.routes[1].match.headers[0].regex: "
        )
        assert "> max program size of 100" in found[1]

    def test_re2_only_syntax_loads(self, tmp_path: Path) -> None:
        """Regexes RE2 accepts but Python's re refuses (\\z, \\p{L}) load and reach the route."""
        policy_set = load(tmp_path, r"^/orders/[0-9]+\z", r"^\Q.\E\p{L}+\z")
        gateway = policy_set.xds.gateways[0].gateway
        [route] = [r for r in gateway.routes if r.name == "orders"]
        assert route.match.regex == r"^/orders/[0-9]+\z"
        assert route.match.headers[0].value == r"^\Q.\E\p{L}+\z"


class TestGeneratedRegexes:
    def test_rate_limit_policy_paths_too_big_for_envoy(self, tmp_path: Path) -> None:
        """Paths whose generated :path regex Envoy would refuse are reported at match.paths."""
        paths = ", ".join(f"/p{i}/*" for i in range(40))
        (tmp_path / "quota.yaml").write_text(
            "apiVersion: mixerless.io/v1alpha1\n"
            "kind: RateLimitPolicy\n"
            "metadata: {name: q, namespace: istio-system}\n"
            "spec:\n"
            "  targetRef: {kind: Gateway, name: public}\n"
            f"  match: {{paths: [{paths}]}}\n"
            "  limit: {requests: 5, unit: minute}\n"
        )
        found = errors(tmp_path, "^/orders$")
        assert len(found) == 1, found
        assert found[0].startswith("quota.yaml:6: spec.match.paths: the paths make a :path regex")
        assert "> max program size of 100" in found[0]

    def test_path_values_are_quoted_as_re2_quotes_them(self) -> None:
        """Istio path values become literal RE2 (RE2::QuoteMeta): '.' and '+' match themselves."""
        regex = path_regex(("/a.b+c", "/v1/*"))
        assert re2_error(regex) is None
        assert regex == r"^(?:\/a\.b\+c|\/v1\/[^?]*)(?:\?.*)?$"
