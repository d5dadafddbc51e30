"""Where tokens are found in a request, as Envoy's jwt_authn extractor finds them."""

from services.authz.jwt.rules import JwtRule
from services.authz.jwt.tokens import (
    ExtractedToken,
    TokenExtractor,
    extract_tokens,
    header_token,
    parse_cookies,
    parse_query,
    remove_query_params,
)
from services.authz.model import HttpRequest

DEFAULT = JwtRule(issuer="https://default.example.com")
CUSTOM = JwtRule(issuer="https://custom.example.com", from_headers=(("x-token", "Token "),))
PARAM = JwtRule(issuer="https://param.example.com", from_params=("jwt",))
COOKIE = JwtRule(issuer="https://cookie.example.com", from_cookies=("session",))


def request(path: str = "/", **headers: str) -> HttpRequest:
    return HttpRequest(path=path, headers={k.replace("_", "-"): v for k, v in headers.items()})


def found(rules: list[JwtRule], req: HttpRequest) -> list[tuple[str, list[str]]]:
    """(token, [location, ...]) pairs, in order."""
    return [(t.token, [str(s.location) for s in t.sources]) for t in extract_tokens(rules, req)]


class TestHeaderPrefix:
    def test_bearer_prefix(self) -> None:
        """``Authorization: Bearer <token>`` yields the token."""
        assert header_token("Bearer abc.def.ghi", "Bearer ") == "abc.def.ghi"

    def test_prefix_is_case_sensitive(self) -> None:
        """``bearer`` is not ``Bearer``: the location yields nothing."""
        assert header_token("bearer abc.def.ghi", "Bearer ") is None

    def test_other_schemes_and_bare_tokens_yield_nothing(self) -> None:
        """Without the prefix anywhere in the value there is no token (not an error)."""
        assert header_token("Basic dXNlcjpwYXNz", "Bearer ") is None
        assert header_token("abc.def.ghi", "Bearer ") is None

    def test_prefix_is_found_anywhere(self) -> None:
        """The prefix may appear after other text in the value."""
        assert header_token("Basic x, Bearer abc.def.ghi", "Bearer ") == "abc.def.ghi"

    def test_token_is_the_rest_of_the_value(self) -> None:
        """Since Envoy 1.29 the token is not cut at a comma or space."""
        assert header_token("Bearer abc.def.ghi, Bearer other", "Bearer ") == (
            "abc.def.ghi, Bearer other"
        )

    def test_leading_non_jwt_characters_are_skipped(self) -> None:
        """Characters that cannot start a JWT are skipped after the prefix."""
        assert header_token('Bearer  "abc.def"', "Bearer ") == 'abc.def"'
        assert header_token("tag=jwt_token,extra=more", "tag") == "jwt_token,extra=more"

    def test_nothing_after_prefix_yields_whole_value(self) -> None:
        """With nothing JWT-like after the prefix the whole value is the token."""
        assert header_token("Bearer  ", "Bearer ") == "Bearer  "

    def test_empty_prefix_takes_the_value(self) -> None:
        """A location without prefix takes the value as it is."""
        assert header_token(" a b ", "") == " a b "


class TestLocations:
    def test_defaults_are_authorization_and_access_token(self) -> None:
        """A rule naming no location reads ``Authorization: Bearer`` and ``access_token``."""
        assert DEFAULT.default_locations
        req = request("/x?access_token=t2", authorization="Bearer t1")
        assert found([DEFAULT], req) == [
            ("t1", ["header authorization ('Bearer ')"]),
            ("t2", ["param access_token"]),
        ]

    def test_explicit_location_disables_defaults(self) -> None:
        """A rule with a custom header does not read ``Authorization``."""
        assert not CUSTOM.default_locations
        req = request("/?access_token=t2", authorization="Bearer t1", x_token="Token t3")
        assert found([CUSTOM], req) == [("t3", ["header x-token ('Token ')"])]

    def test_custom_header_without_its_prefix_is_missing(self) -> None:
        """A custom header lacking its prefix yields no token."""
        assert found([CUSTOM], request(x_token="t3")) == []

    def test_header_names_are_case_insensitive(self) -> None:
        """Configured header names are matched lower-case."""
        rule = JwtRule(issuer="i", from_headers=(("X-Token", ""),))
        assert found([rule], request(x_token="t")) == [("t", ["header x-token"])]

    def test_query_parameter(self) -> None:
        """The first value of the parameter, percent-decoded, fragment ignored."""
        req = request("/p?a=1&jwt=a%2Eb+c&jwt=second#jwt=frag")
        assert found([PARAM], req) == [("a.b+c", ["param jwt"])]

    def test_encoded_parameter_name(self) -> None:
        """Parameter names are percent-decoded before they are compared."""
        assert found([DEFAULT], request("/p?access%5Ftoken=t")) == [("t", ["param access_token"])]

    def test_parameter_without_value_is_an_empty_token(self) -> None:
        """``?jwt`` extracts the empty string, which will fail verification."""
        assert found([PARAM], request("/p?jwt")) == [("", ["param jwt"])]

    def test_cookie(self) -> None:
        """Cookies are found by name, quotes dropped, first one wins."""
        req = request(cookie='a=1; session="tok.en"; session=later')
        assert found([COOKIE], req) == [("tok.en", ["cookie session"])]

    def test_no_tokens(self) -> None:
        """A request without any location set yields nothing."""
        assert found([DEFAULT, CUSTOM, PARAM, COOKIE], request("/p", accept="*/*")) == []


class TestMerging:
    def test_order_is_headers_params_cookies(self) -> None:
        """Headers (by name+prefix), then parameters, then cookies, like Envoy's maps."""
        req = request(
            "/?jwt=p&access_token=d",
            cookie="session=c",
            x_token="Token h2",
            authorization="Bearer h1",
        )
        tokens = found([COOKIE, PARAM, CUSTOM, DEFAULT], req)
        assert [t for t, _ in tokens] == ["h1", "h2", "d", "p", "c"]

    def test_same_token_at_two_locations_is_one_token(self) -> None:
        """A token string found twice is reported once, with both locations."""
        req = request("/?access_token=same", authorization="Bearer same")
        assert found([DEFAULT], req) == [
            ("same", ["header authorization ('Bearer ')", "param access_token"])
        ]

    def test_location_remembers_its_rules(self) -> None:
        """Each location carries exactly the rules that named it (Envoy's issuer checker)."""
        other = JwtRule(issuer="https://other.example.com")
        tokens = TokenExtractor([DEFAULT, CUSTOM, other]).extract(
            request(authorization="Bearer a", x_token="Token b")
        )
        by_token = {t.token: t for t in tokens}
        assert by_token["a"].sources[0].rules == (DEFAULT, other)
        assert by_token["b"].sources[0].rules == (CUSTOM,)

    def test_same_header_different_prefixes_are_two_locations(self) -> None:
        """``AAA`` and ``AAABBB`` on one header both match ``AAABBBtoken``."""
        short = JwtRule(issuer="a", from_headers=(("h", "AAA"),))
        long = JwtRule(issuer="b", from_headers=(("h", "AAABBB"),))
        tokens = extract_tokens([long, short], request(h="AAABBBtok"))
        assert [(t.token, t.sources[0].rules) for t in tokens] == [
            ("BBBtok", (short,)),
            ("tok", (long,)),
        ]

    def test_sources_are_compared_by_value(self) -> None:
        """Sources (the token cache key) are equal exactly when location and rules are."""
        one, two = TokenExtractor([DEFAULT]), TokenExtractor([JwtRule(issuer=DEFAULT.issuer)])
        assert one.sources == two.sources
        assert hash(one.sources[0]) == hash(two.sources[0])
        narrowed = TokenExtractor([JwtRule(issuer=DEFAULT.issuer, audiences=("a",))])
        assert one.sources[0] != narrowed.sources[0]
        assert isinstance(one.extract(request(authorization="Bearer x"))[0], ExtractedToken)


class TestHelpers:
    def test_parse_query(self) -> None:
        """First value per name; names decoded; ``+`` stays a plus."""
        assert parse_query("a=1&a=2&b%20c=x+y&d&&e=") == {"a": "1", "b c": "x+y", "d": "", "e": ""}

    def test_parse_cookies(self) -> None:
        """Malformed pairs are skipped; leading spaces of names dropped."""
        assert parse_cookies('x; a=1;  b="2";c=3=4') == {"a": "1", "b": "2", "c": "3=4"}

    def test_remove_query_params(self) -> None:
        """Removing a parameter drops every value and keeps the rest in order."""
        assert remove_query_params("/p?a=1&jwt=x&b=2&jwt=y", ["jwt"]) == "/p?a=1&b=2"
        assert remove_query_params("/p?jwt=x", ["jwt"]) == "/p"
        assert remove_query_params("/p", ["jwt"]) == "/p"
