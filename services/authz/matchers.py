"""Compiled value matchers for AuthorizationPolicy fields, with Istio's exact semantics.

Every factory validates its input once, at policy-load time, and raises ``ValueError``
with a message naming the bad value; the returned object is immutable and its
``matches(...)`` does no parsing or regex compilation.

Istio value syntax (``pilot/pkg/security/authz/matcher/string.go``, ``header.go``):

* ``v``: exact; ``v*``: prefix; ``*v``: suffix; only one leading or trailing ``*`` is a
  wildcard, a ``*`` anywhere else is a literal character (``/api/*/users`` is exact).
  A value both starting and ending with ``*`` is a suffix (``*a*`` = ends with ``a*``).
* ``*`` alone: presence. For plain strings Envoy uses the RE2 regex ``.+``: non-empty and
  (RE2's ``.`` stops at newlines) without ``\\n``. For headers, hosts and methods Istio uses
  ``present_match``: any present header, **even an empty one**.
* Empty values are rejected (Istio validation: "empty value not allowed").

Field by field, see ``pilot/pkg/security/authz/model/generator.go``:

* principals: ``spiffe://`` is prepended; ``*`` = ``.+``; ``v*`` = prefix ``spiffe://v``;
  ``*v`` = the RE2 regex ``spiffe://.*v`` with ``v`` **not escaped** (a ``.`` in ``v``
  matches any character; this module keeps that and refuses the other regex
  metacharacters, which cannot occur in a valid SPIFFE ID).
* namespaces: regex ``.*/ns/<v>/.*`` with every ``*`` → ``.*`` (same escaping rule).
* serviceAccounts: regex ``spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`` with ``ns`` and
  ``sa`` escaped (Istio's fix for CVE-2026-39350).
* requestPrincipals: split at the last ``/`` into an issuer and a subject pattern
  (``requestPrincipalGenerator``), both matched against JWT claims.
* claims, audiences, presenter: a string claim that matches, or a list claim with a
  matching string element; numbers, booleans and objects never match.
* hosts: ``ignore_case`` (ASCII only, like Envoy), no port handling.
* paths: the string syntax, or a path template when the value contains ``{*}``/``{**}``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from typing import TypeAlias

__all__ = [
    "ClaimMatcher",
    "HostMatcher",
    "IpMatcher",
    "PathMatcher",
    "PortMatcher",
    "PrincipalMatcher",
    "RegexMatcher",
    "RequestPrincipalMatcher",
    "StringSet",
    "ascii_lower",
    "claim_matcher",
    "header_value_matcher",
    "host_matcher",
    "ip_matcher",
    "method_matcher",
    "namespace_matcher",
    "parse_ip",
    "path_matcher",
    "port_matcher",
    "principal_matcher",
    "request_principal_matcher",
    "service_account_matcher",
    "string_matcher",
    "string_set",
    "trust_domain_matcher",
]

SPIFFE_PREFIX = "spiffe://"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only, as Envoy's ``ignore_case`` does (no Unicode case folding)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _nonempty_line(value: str) -> bool:
    """What the RE2 regex ``.+`` (full match) accepts."""
    return bool(value) and "\n" not in value


def _check_patterns(patterns: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        raise ValueError(f"{what}: expected a list of values, got a single string")
    checked = tuple(patterns)
    for pattern in checked:
        if not isinstance(pattern, str):
            raise ValueError(f"{what}: value {pattern!r} must be a string")
        if not pattern:
            raise ValueError(f"{what}: empty value not allowed")
    return checked


# ---------------------------------------------------------------------------------------
# Strings


class StringSet:
    """Any-of a list of Istio string patterns, precompiled.

    Exact values sit in a frozenset, prefixes and suffixes in tuples for
    ``str.startswith``/``str.endswith``. ``presence_matches_empty`` selects the header
    flavour of ``*`` (``present_match``: an empty value matches) over the plain-string one
    (regex ``.+``).
    """

    __slots__ = ("_exact", "_prefixes", "_presence", "_suffixes", "patterns")

    patterns: tuple[str, ...]
    _exact: frozenset[str]
    _prefixes: tuple[str, ...]
    _suffixes: tuple[str, ...]
    _presence: int  # 0: no "*"; 1: "*" = non-empty line; 2: "*" = present, even empty

    def __init__(
        self,
        patterns: Iterable[str],
        *,
        presence_matches_empty: bool = False,
        what: str = "value",
    ) -> None:
        self.patterns = _check_patterns(patterns, what)
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        presence = 0
        for pattern in self.patterns:
            if pattern == "*":
                presence = 2 if presence_matches_empty else 1
            elif pattern.startswith("*"):
                suffixes.append(pattern[1:])
            elif pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffixes = tuple(suffixes)
        self._presence = presence

    def matches(self, value: str | None) -> bool:
        """True if ``value`` matches any pattern; None (absent) never matches."""
        if value is None:
            return False
        if value in self._exact:
            return True
        if self._presence and (self._presence == 2 or _nonempty_line(value)):
            return True
        if self._prefixes and value.startswith(self._prefixes):
            return True
        return bool(self._suffixes) and value.endswith(self._suffixes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.patterns)!r})"


def string_matcher(pattern: str | Iterable[str]) -> StringSet:
    """Plain Istio string syntax (``sni``, ``presenter``...); ``*`` = non-empty."""
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    return StringSet(patterns)


def string_set(patterns: Iterable[str]) -> StringSet:
    """Any-of plain Istio string patterns (``connection.sni`` and the like)."""
    return StringSet(patterns)


def header_value_matcher(patterns: Iterable[str]) -> StringSet:
    """``request.headers[...]`` values: case-sensitive; ``*`` = present, even if empty.

    ``matches(None)`` is the absent header. The caller decides how a repeated header is
    presented (Envoy now matches each value separately, CVE-2026-26308).
    """
    return StringSet(patterns, presence_matches_empty=True, what="header value")


def method_matcher(patterns: Iterable[str]) -> StringSet:
    """``methods``: case-sensitive (``get`` never matches ``GET``); ``*`` = any method."""
    return StringSet(patterns, presence_matches_empty=True, what="method")


class HostMatcher:
    """``hosts``: case-insensitive, ports untouched (``example.com`` ≠ ``example.com:80``)."""

    __slots__ = ("_set",)

    _set: StringSet

    def __init__(self, patterns: Iterable[str]) -> None:
        checked = _check_patterns(patterns, "host")
        self._set = StringSet(
            [ascii_lower(p) for p in checked], presence_matches_empty=True, what="host"
        )

    def matches(self, host: str | None) -> bool:
        """Match a request host as received; it is ASCII-lower-cased here."""
        return host is not None and self._set.matches(ascii_lower(host))

    def matches_lowered(self, host: str | None) -> bool:
        """Match a host the caller already passed through :func:`ascii_lower`."""
        return self._set.matches(host)

    def __repr__(self) -> str:
        return f"HostMatcher({list(self._set.patterns)!r})"


def host_matcher(patterns: Iterable[str]) -> HostMatcher:
    """``hosts`` / ``notHosts``."""
    return HostMatcher(patterns)


# ---------------------------------------------------------------------------------------
# Paths

MATCH_ONE = "{*}"
MATCH_ANY = "{**}"
# RFC 3986 pchar minus "*" (Istio's validLiteral, Envoy's uri_template kLiteral).
_PCHAR = r"a-zA-Z0-9\-._~%!$&'()+,;:@="
_VALID_LITERAL = re.compile(f"[{_PCHAR}]+")
_ONE_SEGMENT = f"[{_PCHAR}]+"
_ANY_SEGMENTS = f"[{_PCHAR}/]*"


def _is_template(pattern: str) -> bool:
    return MATCH_ONE in pattern or MATCH_ANY in pattern


def _check_path_pattern(pattern: str) -> None:
    """Istio's ``CheckValidPathTemplate`` plus what Envoy's uri_template parser refuses."""
    template = _is_template(pattern)
    seen_any = False
    for segment in pattern.strip("/").split("/"):
        if segment in (MATCH_ONE, MATCH_ANY):
            if seen_any:
                raise ValueError(f"invalid path {pattern!r}: {{**}} must be the last operator")
            seen_any = segment == MATCH_ANY
            continue
        if "{" in segment or "}" in segment:
            raise ValueError(
                f"invalid path {pattern!r}: '{{' and '}}' are only allowed as a whole "
                "segment {*} or {**}"
            )
        if template and _VALID_LITERAL.fullmatch(segment) is None:
            what = "an empty segment" if not segment else f"segment {segment!r}"
            raise ValueError(
                f"invalid path template {pattern!r}: {what} is not a valid literal "
                "(letters, digits and -._~%!$&'()+,;:@= only)"
            )
    if template:
        if not pattern.startswith("/"):
            raise ValueError(f"invalid path template {pattern!r}: must start with '/'")
        if "//" in pattern:
            raise ValueError(f"invalid path template {pattern!r}: '//' is not allowed")


def _template_regex(pattern: str) -> str:
    parts = []
    for segment in pattern.split("/"):
        if segment == MATCH_ONE:
            parts.append(_ONE_SEGMENT)
        elif segment == MATCH_ANY:
            parts.append(_ANY_SEGMENTS)
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


class PathMatcher:
    """``paths``: Istio string syntax or templates, against :func:`paths.request_path`.

    Templates (Envoy ``uri_template``): ``{*}`` is one non-empty segment of pchar (no
    ``*``); ``{**}`` is zero or more characters of pchar and ``/``, so ``/a/{**}``
    matches ``/a/`` and ``/a/b/c`` but not ``/a``.
    """

    __slots__ = ("_strings", "_templates")

    _strings: StringSet | None
    _templates: re.Pattern[str] | None

    def __init__(self, patterns: Iterable[str]) -> None:
        checked = _check_patterns(patterns, "path")
        plain: list[str] = []
        templates: list[str] = []
        for pattern in checked:
            _check_path_pattern(pattern)
            (templates if _is_template(pattern) else plain).append(pattern)
        self._strings = StringSet(plain, what="path") if plain else None
        self._templates = (
            re.compile("|".join(f"(?:{_template_regex(t)})" for t in templates))
            if templates
            else None
        )

    def matches(self, path: str | None) -> bool:
        """Match a normalized path without query (``paths.request_path``)."""
        if path is None:
            return False
        if self._strings is not None and self._strings.matches(path):
            return True
        return self._templates is not None and self._templates.fullmatch(path) is not None


def path_matcher(patterns: Iterable[str]) -> PathMatcher:
    """``paths`` / ``notPaths``."""
    return PathMatcher(patterns)


# ---------------------------------------------------------------------------------------
# IPs and ports

IpAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_PREFIX_LENGTH = re.compile(r"0|[1-9][0-9]{0,2}")  # Go netip: no leading zeros


def parse_ip(text: str) -> tuple[int, int] | None:
    """``(version, address as int)`` for a bare IPv4/IPv6 address, else None.

    Uses ``inet_pton`` like Envoy: no ports, brackets, zones, or IPv4 leading zeros.
    """
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def _parse_block(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One ``ipBlocks`` value, as Istio's ``ValidateIPs`` + ``AddrStrToCidrRange`` read it."""
    if "%" in value:
        raise ValueError(f"bad IP address ({value}): zones are not supported")
    if "/" in value:
        address, _, length = value.partition("/")
        if _PREFIX_LENGTH.fullmatch(length) is None:
            raise ValueError(f"bad CIDR range ({value}): prefix length must be a number")
        try:
            # Host bits are allowed and masked, as Envoy's CidrRange does.
            return ipaddress.ip_network(f"{ipaddress.ip_address(address)}/{length}", strict=False)
        except ValueError as exc:
            raise ValueError(f"bad CIDR range ({value}): {exc}") from None
    try:
        return ipaddress.ip_network(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"bad IP address ({value})") from None


class IpMatcher:
    """``ipBlocks`` / ``remoteIpBlocks`` / ``destination.ip``: single IPs or CIDRs.

    An IPv4 address never matches an IPv6 block and vice versa (``::ffff:1.2.3.4`` is
    IPv6). A request IP that does not parse matches nothing.
    """

    __slots__ = ("_v4", "_v6", "values")

    values: tuple[str, ...]
    _v4: tuple[tuple[int, int], ...]  # (network, mask) as integers
    _v6: tuple[tuple[int, int], ...]

    def __init__(self, values: Iterable[str]) -> None:
        self.values = _check_patterns(values, "IP")
        v4: set[tuple[int, int]] = set()
        v6: set[tuple[int, int]] = set()
        for value in self.values:
            network = _parse_block(value)
            entry = (int(network.network_address), int(network.netmask))
            (v4 if network.version == 4 else v6).add(entry)
        # Wider blocks first: they are the likelier hits.
        self._v4 = tuple(sorted(v4, key=lambda e: e[1]))
        self._v6 = tuple(sorted(v6, key=lambda e: e[1]))

    def matches(self, ip: str | None) -> bool:
        """Match an IP given as text (no port, no brackets)."""
        if not ip:
            return False
        parsed = parse_ip(ip)
        if parsed is None:
            return False
        version, value = parsed
        blocks = self._v4 if version == 4 else self._v6
        return any(value & mask == network for network, mask in blocks)

    def matches_address(self, address: IpAddress) -> bool:
        """Match an already parsed address."""
        blocks = self._v4 if address.version == 4 else self._v6
        value = int(address)
        return any(value & mask == network for network, mask in blocks)


def ip_matcher(values: Iterable[str]) -> IpMatcher:
    """IP/CIDR fields; invalid values raise ``ValueError`` (Istio: "bad IP address")."""
    return IpMatcher(values)


_PORT = re.compile(r"[0-9]+")


class PortMatcher:
    """``ports`` / ``destination.port``: the listener (local) port; no wildcard."""

    __slots__ = ("ports",)

    ports: frozenset[int]

    def __init__(self, values: Iterable[str]) -> None:
        ports: set[int] = set()
        for value in _check_patterns(values, "port"):
            # strconv.ParseUint(value, 10, 32): ASCII digits only, no sign, no spaces.
            if _PORT.fullmatch(value) is None or int(value) > 65535:
                raise ValueError(f"bad port ({value}): must be an integer from 0 to 65535")
            ports.add(int(value))
        self.ports = frozenset(ports)

    def matches(self, port: int | None) -> bool:
        return port in self.ports


def port_matcher(values: Iterable[str]) -> PortMatcher:
    """Ports given as strings, as in Istio YAML (``ports: ["8080"]``)."""
    return PortMatcher(values)


# ---------------------------------------------------------------------------------------
# JWT claims and request principals


class ClaimMatcher:
    """``request.auth.claims[...]``, ``audiences``, ``presenter`` (string syntax).

    Matches a string that matches, or a list/tuple with a string element that matches.
    Numbers, booleans, objects, None and non-string list elements never match.
    """

    __slots__ = ("_set",)

    _set: StringSet

    def __init__(self, patterns: Iterable[str]) -> None:
        self._set = StringSet(patterns, what="claim value")

    def matches(self, value: object) -> bool:
        if isinstance(value, str):
            return self._set.matches(value)
        if isinstance(value, list | tuple):
            return any(isinstance(item, str) and self._set.matches(item) for item in value)
        return False


def claim_matcher(patterns: Iterable[str]) -> ClaimMatcher:
    """Claim-valued conditions."""
    return ClaimMatcher(patterns)


_ANY, _EXACT, _PREFIX, _SUFFIX = range(4)


def _test(kind: int, text: str, value: object) -> bool:
    if not isinstance(value, str):
        return False
    if kind == _EXACT:
        return value == text
    if kind == _PREFIX:
        return value.startswith(text)
    if kind == _SUFFIX:
        return value.endswith(text)
    return _nonempty_line(value)


def _request_principal_parts(value: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """(issuer test, subject test) for one value, as ``requestPrincipalGenerator`` builds."""
    cut = value.rfind("/")
    found = cut >= 0
    iss, sub = (value[:cut], value[cut + 1 :]) if found else (value, "")
    if value == "*":
        return (_ANY, ""), (_ANY, "")
    if value.startswith("*"):
        if not found:
            return (_ANY, ""), (_SUFFIX, value[1:])
        iss_test = (_ANY, "") if iss == "*" else (_SUFFIX, iss[1:])
        return iss_test, (_EXACT, sub)
    if value.endswith("*"):
        if not found:
            return (_PREFIX, value[:-1]), (_ANY, "")
        sub_test = (_ANY, "") if sub == "*" else (_PREFIX, sub[:-1])
        return (_EXACT, iss), sub_test
    return (_EXACT, iss), (_EXACT, sub)


class RequestPrincipalMatcher:
    """``requestPrincipals`` / ``request.auth.principal``: issuer and subject tested apart.

    ===========================  ==========  =================
    value                        issuer      subject
    ===========================  ==========  =================
    ``*``                        non-empty   non-empty
    ``*X`` with a ``/``          suffix      exact
    ``*X`` without ``/``         any (1+)    suffix
    ``X*`` with a ``/``          exact       prefix (``/*`` any)
    ``X*`` without ``/``         prefix      any (1+)
    ``iss/sub``                  exact       exact
    ``X`` without ``/``          exact       ``""``
    ===========================  ==========  =================

    The split is at the last ``/``, so a subject containing ``/`` can never be matched
    exactly. A token without ``sub`` (or ``iss``) matches nothing, not even ``*``.
    """

    __slots__ = ("_tests", "patterns")

    patterns: tuple[str, ...]
    _tests: tuple[tuple[tuple[int, str], tuple[int, str]], ...]

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = _check_patterns(patterns, "request principal")
        self._tests = tuple(_request_principal_parts(p) for p in self.patterns)

    def matches(self, principal: tuple[object, object] | None) -> bool:
        """Match ``(iss, sub)`` claims; None (no token) never matches.

        Pass the claims as found: an absent ``sub`` must be None, not ``""``, or the
        ``iss``-only form (subject ``""``) would match tokens that have no ``sub``.
        """
        if principal is None:
            return False
        return self.matches_claims(principal[0], principal[1])

    def matches_claims(self, issuer: object, subject: object) -> bool:
        """Match the ``iss`` and ``sub`` claims (absent or non-string: no match)."""
        if not isinstance(issuer, str) or not isinstance(subject, str):
            return False
        return any(
            _test(iss_kind, iss_text, issuer) and _test(sub_kind, sub_text, subject)
            for (iss_kind, iss_text), (sub_kind, sub_text) in self._tests
        )

    def matches_payload(self, payload: Mapping[str, object] | None) -> bool:
        """Match a verified JWT payload; None (no token) never matches."""
        if payload is None:
            return False
        return self.matches_claims(payload.get("iss"), payload.get("sub"))


def request_principal_matcher(patterns: Iterable[str]) -> RequestPrincipalMatcher:
    """``requestPrincipals`` / ``notRequestPrincipals``."""
    return RequestPrincipalMatcher(patterns)


# ---------------------------------------------------------------------------------------
# Peer identity (mTLS principal)

# RE2 metacharacters other than "." (and "*", handled by each caller).
_REGEX_SPECIALS = frozenset("\\+?()|[]{}^$")


def _unescaped_regex_text(value: str, what: str, *, star: str | None) -> str:
    """Istio's unescaped value as a Python regex: ``.`` stays a wildcard.

    ``star`` is what ``*`` becomes (None: refused). Other regex metacharacters are refused,
    since Istio would hand them to RE2 as regex syntax.
    """
    parts = []
    for char in value:
        if char == ".":
            parts.append(".")
        elif char == "*" and star is not None:
            parts.append(star)
        elif char == "*" or char in _REGEX_SPECIALS:
            raise ValueError(
                f"{what} {value!r}: character {char!r} is not supported here (Istio puts "
                "this value into a regular expression without escaping it)"
            )
        else:
            parts.append(re.escape(char))
    return "".join(parts)


class RegexMatcher:
    """Full-match of one precompiled alternation (namespaces, service accounts)."""

    __slots__ = ("_regex", "patterns")

    patterns: tuple[str, ...]
    _regex: re.Pattern[str]

    def __init__(self, patterns: tuple[str, ...], alternatives: list[str]) -> None:
        self.patterns = patterns
        self._regex = re.compile("|".join(f"(?:{a})" for a in alternatives))

    def matches(self, value: str | None) -> bool:
        """Match the peer principal; "" or None (no mTLS) never matches."""
        if not value:
            return False
        return self._regex.fullmatch(value) is not None


class PrincipalMatcher:
    """``principals`` / ``source.principal``: the peer's SPIFFE ID, ``spiffe://`` implied.

    ``*`` is any mTLS peer (non-empty principal); ``v*`` a prefix of ``spiffe://v``;
    ``*v`` the regex ``spiffe://.*v`` (``.`` in ``v`` matches any character, as in
    Istio); otherwise exactly ``spiffe://v``. Plaintext (principal ``""``) never matches.
    """

    __slots__ = ("_any", "_exact", "_prefixes", "_suffix_regex", "patterns")

    patterns: tuple[str, ...]
    _any: bool
    _exact: frozenset[str]
    _prefixes: tuple[str, ...]
    _suffix_regex: re.Pattern[str] | None

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = _check_patterns(patterns, "principal")
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        self._any = False
        for pattern in self.patterns:
            if pattern == "*":
                self._any = True
            elif pattern.startswith("*"):
                text = _unescaped_regex_text(pattern[1:], "principal", star=None)
                suffixes.append(re.escape(SPIFFE_PREFIX) + ".*" + text)
            elif pattern.endswith("*"):
                prefixes.append(SPIFFE_PREFIX + pattern[:-1])
            else:
                exact.add(SPIFFE_PREFIX + pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffix_regex = (
            re.compile("|".join(f"(?:{s})" for s in suffixes)) if suffixes else None
        )

    def matches(self, principal: str | None) -> bool:
        if not principal:
            return False
        if principal in self._exact:
            return True
        if self._any and "\n" not in principal:
            return True
        if self._prefixes and principal.startswith(self._prefixes):
            return True
        regex = self._suffix_regex
        return regex is not None and regex.fullmatch(principal) is not None


def principal_matcher(patterns: Iterable[str]) -> PrincipalMatcher:
    """``principals`` / ``notPrincipals`` (trust-domain aliases are not expanded here)."""
    return PrincipalMatcher(patterns)


def namespace_matcher(patterns: Iterable[str]) -> RegexMatcher:
    """``namespaces`` / ``source.namespace``: regex ``.*/ns/<v>/.*``, each ``*`` → ``.*``."""
    checked = _check_patterns(patterns, "namespace")
    alternatives = [
        ".*/ns/" + _unescaped_regex_text(p, "namespace", star=".*") + "/.*" for p in checked
    ]
    return RegexMatcher(checked, alternatives)


MAX_SERVICE_ACCOUNTS = 16
MAX_SERVICE_ACCOUNT_LENGTH = 320


def service_account_matcher(values: Iterable[str], default_namespace: str) -> RegexMatcher:
    """``serviceAccounts`` / ``source.serviceAccount``: ``ns/sa`` or ``sa`` (policy namespace).

    Validation is Istio's ``CheckServiceAccount``; the regex escapes both names.
    """
    checked = _check_patterns(values, "service account")
    if len(checked) > MAX_SERVICE_ACCOUNTS:
        raise ValueError(f"service account: may not have more than {MAX_SERVICE_ACCOUNTS} values")
    alternatives = []
    for value in checked:
        if "*" in value:
            raise ValueError(f"service account {value!r}: wildcard not allowed")
        if value.count("/") > 1:
            raise ValueError(
                f"service account {value!r}: expected 'serviceAccount' or "
                "'namespace/serviceAccount'"
            )
        if len(value) > MAX_SERVICE_ACCOUNT_LENGTH:
            raise ValueError(
                f"service account {value!r}: longer than {MAX_SERVICE_ACCOUNT_LENGTH} characters"
            )
        namespace, slash, account = value.partition("/")
        if not slash:
            namespace, account = default_namespace, value
        if not namespace:
            raise ValueError(f"service account {value!r}: empty namespace")
        if not account:
            raise ValueError(f"service account {value!r}: empty service account")
        alternatives.append(
            f"spiffe://.+/ns/{re.escape(namespace)}/(?:.+/|)sa/{re.escape(account)}(?:/.+)?"
        )
    return RegexMatcher(checked, alternatives)


def trust_domain_matcher(values: Iterable[str]) -> StringSet:
    """``trustDomains``: principal starts with ``spiffe://<td>/``.

    Wildcards and ``/`` are refused (the semantics of a wildcard here are not documented).
    """
    checked = _check_patterns(values, "trust domain")
    for value in checked:
        if "*" in value or "/" in value:
            raise ValueError(f"trust domain {value!r}: '*' and '/' are not allowed")
    return StringSet([f"{SPIFFE_PREFIX}{value}/*" for value in checked], what="trust domain")
