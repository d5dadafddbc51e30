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

Identities (claims, request principals, SPIFFE principals) are matched by
``services.authz.identity_matchers``. Field by field here:

* hosts: ``ignore_case`` (ASCII only, like Envoy), no port handling.
* paths: the string syntax, or a path template when the value contains ``{*}``/``{**}``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import TypeAlias

__all__ = [
    "HostMatcher",
    "IpMatcher",
    "PathMatcher",
    "PortMatcher",
    "StringSet",
    "ascii_lower",
    "header_value_matcher",
    "host_matcher",
    "ip_matcher",
    "method_matcher",
    "parse_ip",
    "path_matcher",
    "port_matcher",
    "string_matcher",
    "string_set",
]


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only, as Envoy's ``ignore_case`` does (no Unicode case folding)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def nonempty_line(value: str) -> bool:
    """What the RE2 regex ``.+`` (full match) accepts."""
    return bool(value) and "\n" not in value


def check_patterns(patterns: Iterable[str], what: str) -> tuple[str, ...]:
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
        self.patterns = check_patterns(patterns, what)
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
        if self._presence and (self._presence == 2 or nonempty_line(value)):
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
        checked = check_patterns(patterns, "host")
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

    __slots__ = ("_strings", "_templates", "patterns")

    patterns: tuple[str, ...]  # as written: equal patterns, equal answers
    _strings: StringSet | None
    _templates: re.Pattern[str] | None

    def __init__(self, patterns: Iterable[str]) -> None:
        checked = check_patterns(patterns, "path")
        self.patterns = checked
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
        self.values = check_patterns(values, "IP")
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
        for value in check_patterns(values, "port"):
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
