"""Compiled AuthorizationPolicy value matchers: Istio's syntax and Envoy's semantics."""

import ipaddress
from typing import Any

import pytest

from services.authz.identity_matchers import (
    claim_matcher,
    namespace_matcher,
    principal_matcher,
    request_principal_matcher,
    service_account_matcher,
    trust_domain_matcher,
)
from services.authz.matchers import (
    StringSet,
    ascii_lower,
    header_value_matcher,
    host_matcher,
    ip_matcher,
    method_matcher,
    parse_ip,
    path_matcher,
    port_matcher,
    string_matcher,
    string_set,
)


class TestStringSyntax:
    @pytest.mark.parametrize(
        ("pattern", "value", "expected"),
        [
            ("abc", "abc", True),
            ("abc", "abcd", False),
            ("abc", "ABC", False),
            ("ab*", "abc", True),
            ("ab*", "ab", True),
            ("ab*", "xab", False),
            ("*bc", "abc", True),
            ("*bc", "bc", True),
            ("*bc", "bcd", False),
            ("a*c", "abc", False),  # a middle "*" is a literal
            ("a*c", "a*c", True),
            ("/api/*/users", "/api/v1/users", False),
            ("/api/*/users", "/api/*/users", True),
            ("*a*", "xa*", True),  # leading "*" wins: suffix "a*"
            ("*a*", "xab", False),
            ("**", "x*", True),  # suffix "*"
            ("**", "x", False),
            ("*", "x", True),
            ("*", "", False),  # "*" is the regex .+ for plain strings
            ("*", "a\nb", False),  # RE2's "." stops at newlines
        ],
    )
    def test_single_pattern(self, pattern: str, value: str, expected: bool) -> None:
        """Exact, prefix, suffix, presence; only a leading or trailing '*' is a wildcard."""
        assert string_matcher(pattern).matches(value) is expected

    def test_absent_value_never_matches(self) -> None:
        """None (attribute absent) matches no pattern, not even '*'."""
        assert not string_set(["*", "a*", "*a", "a"]).matches(None)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("get", True), ("/v1/x", True), ("x.json", True), ("/v2/x", False), ("", False)],
    )
    def test_any_of_many(self, value: str, expected: bool) -> None:
        """A StringSet matches when any of its exact, prefix or suffix patterns does."""
        matcher = StringSet(["get", "put", "/v1/*", "*.json"])
        assert matcher.matches(value) is expected

    @pytest.mark.parametrize(
        ("patterns", "message"),
        [
            ([""], "empty value"),
            (["a", ""], "empty value"),
            ([3], "must be a string"),
            ("abc", "single string"),
        ],
    )
    def test_invalid_patterns(self, patterns: Any, message: str) -> None:
        """Empty values, non-strings and a bare string instead of a list are refused."""
        with pytest.raises(ValueError, match=message):
            StringSet(patterns)


class TestHeaderAndMethod:
    @pytest.mark.parametrize(
        ("pattern", "value", "expected"),
        [
            ("*", "", True),  # present_match: an empty header is present
            ("*", "x", True),
            ("*", None, False),
            ("Bearer *", "Bearer abc", True),
            ("bearer *", "Bearer abc", False),  # case-sensitive values
            ("*json", "application/json", True),
            ("v1", "v1", True),
            ("v1", "v1 ", False),
        ],
    )
    def test_header_values(self, pattern: str, value: str | None, expected: bool) -> None:
        """Header values are case-sensitive; '*' only needs the header to be present."""
        assert header_value_matcher([pattern]).matches(value) is expected

    @pytest.mark.parametrize(
        ("pattern", "value", "expected"),
        [
            ("GET", "GET", True),
            ("GET", "get", False),
            ("get", "GET", False),
            ("*", "PATCH", True),
            ("P*", "POST", True),
            ("*", None, False),
        ],
    )
    def test_methods(self, pattern: str, value: str | None, expected: bool) -> None:
        """Methods are case-sensitive; '*' is any method."""
        assert method_matcher([pattern]).matches(value) is expected


class TestHosts:
    @pytest.mark.parametrize(
        ("pattern", "host", "expected"),
        [
            ("example.com", "example.com", True),
            ("example.com", "EXAMPLE.com", True),
            ("EXAMPLE.COM", "example.com", True),
            ("example.com", "example.com:8080", False),  # no port stripping
            ("example.com:*", "example.com:8080", True),
            ("example.com:*", "example.com", False),
            ("*.example.com", "API.Example.Com", True),
            ("*.example.com", "example.com", False),
            ("api.*", "API.internal", True),
            ("*", "", True),  # present_match
            ("*", None, False),
            ("k.com", "\u212a.com", False),  # Kelvin sign: no Unicode case folding
        ],
    )
    def test_case_insensitive_port_sensitive(
        self, pattern: str, host: str | None, expected: bool
    ) -> None:
        """Hosts ignore ASCII case (CVE-2021-39155) but not ports."""
        assert host_matcher([pattern]).matches(host) is expected

    def test_matches_lowered_skips_lowering(self) -> None:
        """matches_lowered expects a host the caller already passed through ascii_lower."""
        matcher = host_matcher(["Example.COM"])
        assert matcher.matches_lowered(ascii_lower("EXAMPLE.com"))
        assert not matcher.matches_lowered("EXAMPLE.com")

    def test_ascii_lower_leaves_non_ascii(self) -> None:
        """ascii_lower folds A-Z only."""
        assert ascii_lower("ÀB\u212a") == "Àb\u212a"

    def test_empty_host_rejected(self) -> None:
        """An empty host value is invalid."""
        with pytest.raises(ValueError, match="host: empty value"):
            host_matcher([""])


class TestPaths:
    @pytest.mark.parametrize(
        ("pattern", "path", "expected"),
        [
            ("/admin", "/admin", True),
            ("/admin", "/admin/", False),
            ("/admin", "/ADMIN", False),
            ("/admin/*", "/admin/x/y", True),
            ("/admin*", "/administrator", True),
            ("*.php", "/x/y.php", True),
            ("*", "/", True),
            ("/api/*/users", "/api/v1/users", False),
            ("/api/*/users", "/api/*/users", True),
        ],
    )
    def test_string_syntax(self, pattern: str, path: str, expected: bool) -> None:
        """Without template operators, paths use the plain string syntax."""
        assert path_matcher([pattern]).matches(path) is expected

    @pytest.mark.parametrize(
        ("template", "path", "expected"),
        [
            # Observed in Istio's TestAuthz_PathTemplating.
            ("/allow/admin/{**}", "/allow/admin/", True),
            ("/allow/admin/{**}", "/allow/admin", False),
            ("/foo/{*}/bar/{**}", "/foo/buzz/bar/bat", True),
            ("/foo/{*}/bar/{**}", "/foo//bar/x", False),
            # More of Envoy's uri_template semantics.
            ("/allow/admin/{**}", "/allow/admin/a/b/c", True),
            ("/foo/{*}/bar/{**}", "/foo/buzz/bar/", True),
            ("/foo/{*}/bar/{**}", "/foo/buzz/bar", False),
            ("/foo/{*}/bar/{**}", "/foo/a/b/bar/x", False),
            ("/{*}", "/x", True),
            ("/{*}", "/", False),
            ("/{*}", "/a/b", False),
            ("/{*}/", "/a/", True),
            ("/a/{*}/c", "/a/b/c", True),
            ("/a/{*}/c", "/a/b.json/c", True),
            ("/a/{*}/c", "/a/%2F/c", True),
            ("/a/{*}/c", "/a/b*/c", False),  # "*" is not pchar here
            ("/a/{*}/c", "/a/b[0]/c", False),
            ("/a/{**}/z", "/a/b/c/z", True),  # a literal may follow {**}
            ("/a/{**}/z", "/a//z", True),
            ("/a/{**}/z", "/a/z", False),
            ("/v1.0/{*}", "/v1x0/a", False),  # literals are escaped
        ],
    )
    def test_templates(self, template: str, path: str, expected: bool) -> None:
        """{*} is one non-empty pchar segment, {**} zero or more characters incl. '/'."""
        assert path_matcher([template]).matches(path) is expected

    def test_templates_and_strings_together(self) -> None:
        """One matcher mixes plain patterns and templates; any may match."""
        matcher = path_matcher(["/health", "/api/*", "/users/{*}/profile", "/files/{**}"])
        assert matcher.matches("/health")
        assert matcher.matches("/api/x")
        assert matcher.matches("/users/42/profile")
        assert matcher.matches("/files/")
        assert not matcher.matches("/users/42/settings")
        assert not matcher.matches(None)

    @pytest.mark.parametrize(
        ("pattern", "message"),
        [
            ("/a/{**}/{*}", r"\{\*\*\} must be the last operator"),
            ("/{**}/b/{**}", r"\{\*\*\} must be the last operator"),
            ("/a/{*}x", r"only allowed as a whole segment"),
            ("/a/x{**}", r"only allowed as a whole segment"),
            ("/a/{id}", r"only allowed as a whole segment"),
            ("/a/{}", r"only allowed as a whole segment"),
            ("/a/{", r"only allowed as a whole segment"),
            ("/a/}", r"only allowed as a whole segment"),
            ("/a/{{*}}", r"only allowed as a whole segment"),
            ("/a/*/{*}", r"segment '\*' is not a valid literal"),
            ("/a/b c/{*}", r"segment 'b c' is not a valid literal"),
            ("/a/[x]/{*}", r"not a valid literal"),
            ("/a//{*}", r"an empty segment is not a valid literal"),
            ("{*}/a", r"must start with '/'"),
            ("//{*}", r"'//' is not allowed"),
            ("/{*}//", r"'//' is not allowed"),
        ],
    )
    def test_invalid_templates(self, pattern: str, message: str) -> None:
        """Invalid templates are refused at load with a message naming the problem."""
        with pytest.raises(ValueError, match=message):
            path_matcher([pattern])

    def test_braces_refused_even_without_template(self) -> None:
        """Istio refuses '{' or '}' in any path, template or not."""
        with pytest.raises(ValueError, match="only allowed as a whole segment"):
            path_matcher(["/api/{id}/users"])


class TestIps:
    @pytest.mark.parametrize(
        ("values", "ip", "expected"),
        [
            (["10.1.2.3"], "10.1.2.3", True),
            (["10.1.2.3"], "10.1.2.4", False),
            (["10.0.0.0/8"], "10.255.1.1", True),
            (["10.0.0.0/8"], "11.0.0.1", False),
            (["10.1.2.3/8"], "10.9.9.9", True),  # host bits are masked, as in Envoy
            (["0.0.0.0/0"], "192.0.2.1", True),
            (["0.0.0.0/0"], "2001:db8::1", False),
            (["2001:db8::/32"], "2001:db8:ffff::1", True),
            (["2001:db8::/32"], "2001:db9::1", False),
            (["2001:db8::1"], "2001:DB8:0::1", True),
            (["::/0"], "10.0.0.1", False),
            (["1.2.3.4"], "::ffff:1.2.3.4", False),  # versions never mix
            (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::5", True),
            (["10.0.0.0/8"], "", False),
            (["10.0.0.0/8"], None, False),
            (["10.0.0.0/8"], "10.0.0.1:80", False),
            (["10.0.0.0/8"], "junk", False),
            (["fe80::/10"], "fe80::1%eth0", False),
        ],
    )
    def test_single_ips_and_cidrs(self, values: list[str], ip: str | None, expected: bool) -> None:
        """IPv4/IPv6 addresses and CIDRs; an unparseable request IP matches nothing."""
        assert ip_matcher(values).matches(ip) is expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("10.0.0.256", r"bad IP address \(10\.0\.0\.256\)"),
            ("example.com", "bad IP address"),
            ("010.1.2.3", "bad IP address"),
            ("10.0.0.0/33", "bad CIDR range"),
            ("2001:db8::/129", "bad CIDR range"),
            ("10.0.0.0/255.0.0.0", "prefix length must be a number"),
            ("10.0.0.0/08", "prefix length must be a number"),
            ("10.0.0.0/", "prefix length must be a number"),
            ("/8", "bad CIDR range"),
            ("fe80::1%eth0", "zones are not supported"),
            ("", "empty value"),
        ],
    )
    def test_invalid_values(self, value: str, message: str) -> None:
        """Bad IPs and CIDRs are refused at load (Istio's ValidateIPs)."""
        with pytest.raises(ValueError, match=message):
            ip_matcher([value])

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("10.0.0.1", (4, 0x0A000001)),
            ("::1", (6, 1)),
            ("::ffff:1.2.3.4", (6, 0xFFFF01020304)),
            ("01.2.3.4", None),
            ("1.2.3.4:80", None),
            ("[::1]", None),
            ("fe80::1%eth0", None),
            ("1.2.3.4\x00", None),
            ("caf\u00e9", None),
            ("", None),
        ],
    )
    def test_parse_ip(self, text: str, expected: tuple[int, int] | None) -> None:
        """parse_ip accepts only what inet_pton accepts: bare, canonical-enough addresses."""
        assert parse_ip(text) == expected

    def test_matches_parsed_address(self) -> None:
        """matches_address takes an ipaddress object directly."""
        matcher = ip_matcher(["10.0.0.0/8", "2001:db8::/32"])
        assert matcher.matches_address(ipaddress.ip_address("10.2.3.4"))
        assert matcher.matches_address(ipaddress.ip_address("2001:db8::9"))
        assert not matcher.matches_address(ipaddress.ip_address("11.2.3.4"))


class TestPorts:
    @pytest.mark.parametrize(
        ("port", "expected"), [(8080, True), (443, True), (0, True), (80, False), (None, False)]
    )
    def test_listed_ports(self, port: int | None, expected: bool) -> None:
        """Ports match by integer value."""
        assert port_matcher(["8080", "443", "0"]).matches(port) is expected

    def test_leading_zeros_allowed(self) -> None:
        """Go's ParseUint accepts leading zeros: '080' is port 80."""
        assert port_matcher(["080"]).matches(80)

    @pytest.mark.parametrize(
        "value", ["65536", "-1", "+80", " 80", "80 ", "8_0", "http", "*", "1e3"]
    )
    def test_invalid_ports(self, value: str) -> None:
        """Non-integers, signs, spaces and values above 65535 are refused."""
        with pytest.raises(ValueError, match="bad port"):
            port_matcher([value])

    def test_non_string_port_refused(self) -> None:
        """Ports are strings in Istio YAML; an integer value is a schema error."""
        with pytest.raises(ValueError, match="must be a string"):
            port_matcher([8080])  # type: ignore[list-item]


class TestClaims:
    @pytest.mark.parametrize(
        ("patterns", "claim", "expected"),
        [
            (["admin"], "admin", True),
            (["admin"], "Admin", False),
            (["admin"], ["user", "admin"], True),
            (["admin"], ("admin",), True),
            (["admin"], ["user"], False),
            (["adm*"], ["x", "admins"], True),
            (["*"], "x", True),
            (["*"], "", False),
            (["*"], [""], False),
            (["*"], [], False),
            (["1"], 1, False),  # numbers never match
            (["true"], True, False),  # booleans never match
            (["*"], 1.5, False),
            (["*"], {"a": "b"}, False),
            (["*"], None, False),
            (["1"], [1, "2"], False),
            (["2"], [1, "2"], True),
            (["a"], [["a"]], False),  # nested lists are not searched
        ],
    )
    def test_string_or_list(self, patterns: list[str], claim: object, expected: bool) -> None:
        """A string claim that matches, or a list claim with a matching string element."""
        assert claim_matcher(patterns).matches(claim) is expected


class TestRequestPrincipals:
    ISS = "https://accounts.example.com"

    @pytest.mark.parametrize(
        ("pattern", "iss", "sub", "expected"),
        [
            # "*": issuer and subject both non-empty.
            ("*", ISS, "alice", True),
            ("*", ISS, "", False),
            ("*", "", "alice", False),
            # "*X" with a "/": issuer suffix, subject exact.
            ("*example.com/alice", ISS, "alice", True),
            ("*example.com/alice", ISS, "alice2", False),
            ("*example.com/alice", "https://example.org", "alice", False),
            ("*/alice", ISS, "alice", True),  # issuer "*" = any non-empty issuer
            ("*/alice", "", "alice", False),
            # "*X" without "/": any issuer, subject suffix.
            ("*ice", ISS, "alice", True),
            ("*ice", ISS, "bob", False),
            # "X*" with a "/": issuer exact, subject prefix ("/*" = any subject).
            (f"{ISS}/al*", ISS, "alice", True),
            (f"{ISS}/al*", ISS, "bob", False),
            (f"{ISS}/*", ISS, "anyone", True),
            (f"{ISS}/*", ISS, "", False),
            (f"{ISS}/*", "https://other", "anyone", False),
            # "X*" without "/": issuer prefix, any subject.
            ("https:*", ISS, "alice", True),  # the value has no "/", the issuer may
            ("http:*", ISS, "alice", False),
            ("accounts*", "accounts.example", "x", True),
            ("accounts*", "accounts.example", "", False),
            # exact "iss/sub".
            (f"{ISS}/alice", ISS, "alice", True),
            (f"{ISS}/alice", ISS, "bob", False),
            # exact without "/": issuer exact, subject "".
            ("issuer-only", "issuer-only", "", True),
            ("issuer-only", "issuer-only", "alice", False),
        ],
    )
    def test_seven_forms(self, pattern: str, iss: str, sub: str, expected: bool) -> None:
        """Values split at the last '/' into issuer and subject tests (Istio's generator)."""
        assert request_principal_matcher([pattern]).matches((iss, sub)) is expected

    def test_subject_with_slash_cannot_match_exactly(self) -> None:
        """A subject containing '/' is split off wrongly, so it never matches exactly."""
        matcher = request_principal_matcher([f"{self.ISS}/team/alice"])
        assert not matcher.matches((self.ISS, "team/alice"))
        assert matcher.matches((f"{self.ISS}/team", "alice"))

    @pytest.mark.parametrize(
        "principal",
        [None, ("iss", None), (None, "sub"), ("iss", 7), (["iss"], "sub")],
    )
    def test_missing_or_non_string_claims(self, principal: Any) -> None:
        """No token, a missing sub or a non-string claim never matches, not even '*'."""
        matcher = request_principal_matcher(["*", "iss"])
        assert not matcher.matches(principal)

    def test_payload_helper(self) -> None:
        """matches_payload reads iss and sub from a verified JWT payload."""
        matcher = request_principal_matcher([f"{self.ISS}/alice"])
        assert matcher.matches_payload({"iss": self.ISS, "sub": "alice", "aud": "x"})
        assert not matcher.matches_payload({"iss": self.ISS})
        assert not matcher.matches_payload(None)


class TestPeerPrincipals:
    SA = "spiffe://cluster.local/ns/prod/sa/api"

    @pytest.mark.parametrize(
        ("pattern", "principal", "expected"),
        [
            ("cluster.local/ns/prod/sa/api", SA, True),
            ("cluster.local/ns/prod/sa/api", SA + "2", False),
            ("cluster.local/ns/prod/*", SA, True),
            ("cluster.local/ns/dev/*", SA, False),
            ("*/sa/api", SA, True),
            ("*/sa/ap", SA, False),
            ("*", SA, True),
            ("*", "", False),  # plaintext: no principal
            ("*", None, False),
            ("*/sa/api", "", False),
            ("*cluster.local/ns/prod/sa/api", "spiffe://x.cluster.local/ns/prod/sa/api", True),
            # Istio does not escape the suffix regex: "." matches any character.
            ("*.local/ns/prod/sa/api", "spiffe://clusterXlocal/ns/prod/sa/api", True),
            ("*/sa/api", "https://cluster.local/ns/prod/sa/api", False),
        ],
    )
    def test_spiffe_semantics(self, pattern: str, principal: str | None, expected: bool) -> None:
        """spiffe:// is implied; '*' is any mTLS peer; '*x' is the regex spiffe://.*x."""
        assert principal_matcher([pattern]).matches(principal) is expected

    @pytest.mark.parametrize("pattern", ["*a+b", "*x(y)", "*[a]", "*a|b", "**x", "*x*", "*a$"])
    def test_regex_metacharacters_after_star_refused(self, pattern: str) -> None:
        """Istio would hand these to RE2 unescaped; they cannot occur in SPIFFE IDs: refused."""
        with pytest.raises(ValueError, match="not supported here"):
            principal_matcher([pattern])

    def test_metacharacters_fine_in_exact_and_prefix(self) -> None:
        """Exact and prefix principals are literal strings, whatever they contain."""
        matcher = principal_matcher(["td/ns/a+b/sa/x", "td/ns/(c)*"])
        assert matcher.matches("spiffe://td/ns/a+b/sa/x")
        assert matcher.matches("spiffe://td/ns/(c)/sa/y")


class TestNamespaces:
    @pytest.mark.parametrize(
        ("pattern", "principal", "expected"),
        [
            ("prod", "spiffe://cluster.local/ns/prod/sa/api", True),
            ("prod", "spiffe://cluster.local/ns/production/sa/api", False),
            ("prod", "spiffe://cluster.local/ns/dev/sa/prod", False),
            ("prod*", "spiffe://cluster.local/ns/production/sa/api", True),
            ("*-prod", "spiffe://cluster.local/ns/team-prod/sa/api", True),
            ("a*b", "spiffe://cluster.local/ns/axxb/sa/api", True),  # every "*" is ".*"
            ("*", "spiffe://cluster.local/ns/anything/sa/api", True),
            ("*", "", False),  # plaintext
            ("prod", None, False),
        ],
    )
    def test_regex_on_principal(self, pattern: str, principal: str | None, expected: bool) -> None:
        """namespaces is the regex .*/ns/<v>/.* on the peer principal, '*' → '.*'."""
        assert namespace_matcher([pattern]).matches(principal) is expected

    def test_metacharacters_refused(self) -> None:
        """Regex metacharacters in a namespace are refused at load."""
        with pytest.raises(ValueError, match="not supported here"):
            namespace_matcher(["prod|dev"])


class TestServiceAccounts:
    @pytest.mark.parametrize(
        ("value", "principal", "expected"),
        [
            ("prod/api", "spiffe://cluster.local/ns/prod/sa/api", True),
            ("api", "spiffe://cluster.local/ns/default/sa/api", True),  # policy namespace
            ("api", "spiffe://cluster.local/ns/prod/sa/api", False),
            ("prod/api", "spiffe://cluster.local/ns/prod/sa/api-junk", False),
            ("prod/api", "spiffe://cluster.local/ns/prod/sa/api/extra", True),
            ("prod/api", "spiffe://cluster.local/ns/prod/k/v/sa/api", True),
            ("prod/api", "spiffe://cluster.local/ns/prod/sa/apiX", False),
            ("prod/api", "spiffe:///ns/prod/sa/api", False),  # needs a trust domain
            ("prod/api", "", False),
            # CVE-2026-39350: names are escaped, "." is not a wildcard.
            ("prod/my.sa", "spiffe://cluster.local/ns/prod/sa/my.sa", True),
            ("prod/my.sa", "spiffe://cluster.local/ns/prod/sa/myXsa", False),
            ("a.b/api", "spiffe://cluster.local/ns/aXb/sa/api", False),
            ("prod/api+", "spiffe://cluster.local/ns/prod/sa/apii", False),
            ("prod/api+", "spiffe://cluster.local/ns/prod/sa/api+", True),
        ],
    )
    def test_regex_escaped(self, value: str, principal: str, expected: bool) -> None:
        """ns/sa or sa (policy namespace) with escaped names, per Istio's regex."""
        assert service_account_matcher([value], "default").matches(principal) is expected

    @pytest.mark.parametrize(
        ("values", "message"),
        [
            (["prod/*"], "wildcard not allowed"),
            (["a/b/c"], "expected 'serviceAccount' or 'namespace/serviceAccount'"),
            (["/api"], "empty namespace"),
            (["prod/"], "empty service account"),
            (["x" * 321], "longer than 320"),
            ([f"sa{i}" for i in range(17)], "more than 16"),
            ([""], "empty value"),
        ],
    )
    def test_invalid_values(self, values: list[str], message: str) -> None:
        """Istio's CheckServiceAccount rules are enforced at load."""
        with pytest.raises(ValueError, match=message):
            service_account_matcher(values, "default")

    def test_short_form_needs_default_namespace(self) -> None:
        """A bare service account with no policy namespace is refused."""
        with pytest.raises(ValueError, match="empty namespace"):
            service_account_matcher(["api"], "")


class TestTrustDomains:
    @pytest.mark.parametrize(
        ("principal", "expected"),
        [
            ("spiffe://cluster.local/ns/a/sa/b", True),
            ("spiffe://cluster.local.evil/ns/a/sa/b", False),
            ("spiffe://other.local/ns/a/sa/b", False),
            ("", False),
            (None, False),
        ],
    )
    def test_prefix(self, principal: str | None, expected: bool) -> None:
        """trustDomains is the prefix spiffe://<td>/ on the peer principal."""
        assert trust_domain_matcher(["cluster.local"]).matches(principal) is expected

    @pytest.mark.parametrize("value", ["*", "cluster.*", "a/b", ""])
    def test_invalid(self, value: str) -> None:
        """Wildcards, '/' and empty trust domains are refused."""
        with pytest.raises(ValueError, match="trust domain"):
            trust_domain_matcher([value])
