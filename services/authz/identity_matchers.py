"""Compiled matchers for identities: JWT claims and request principals, and the peer's
SPIFFE identity (principals, namespaces, service accounts, trust domains).

Same contract as ``services.authz.matchers`` (validate at load, raise ``ValueError``,
no parsing per request); see its docstring for Istio's value syntax. Field by field
(``pilot/pkg/security/authz/model/generator.go``):

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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from services.authz.matchers import StringSet, check_patterns, nonempty_line

__all__ = [
    "ClaimMatcher",
    "PrincipalMatcher",
    "RegexMatcher",
    "RequestPrincipalMatcher",
    "claim_matcher",
    "namespace_matcher",
    "principal_matcher",
    "request_principal_matcher",
    "service_account_matcher",
    "trust_domain_matcher",
]

SPIFFE_PREFIX = "spiffe://"

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
    return nonempty_line(value)


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
        self.patterns = check_patterns(patterns, "request principal")
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
        self.patterns = check_patterns(patterns, "principal")
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
    checked = check_patterns(patterns, "namespace")
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
    checked = check_patterns(values, "service account")
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
    checked = check_patterns(values, "trust domain")
    for value in checked:
        if "*" in value or "/" in value:
            raise ValueError(f"trust domain {value!r}: '*' and '/' are not allowed")
    return StringSet([f"{SPIFFE_PREFIX}{value}/*" for value in checked], what="trust domain")
