"""Regexes Envoy can compile: RE2 syntax, checked at load instead of by an Envoy NACK.

RE2 (Envoy's ``safe_regex``) has no lookaround, backreferences, atomic groups,
possessive quantifiers or conditionals. A pattern must compile with Python's ``re``
(which shares the rest of the syntax) and use none of those.
"""

import re

_UNSUPPORTED = (
    (re.compile(r"\(\?<?[=!]"), "lookaround ((?=, (?!, (?<=, (?<!)"),
    (re.compile(r"\\[1-9]|\(\?P=|\\g<"), "backreferences"),
    (re.compile(r"\(\?>"), "atomic groups ((?>)"),
    (re.compile(r"\(\?\("), "conditionals ((?(...))"),
    (re.compile(r"(?<!\\)[*+?}]\+"), "possessive quantifiers (*+, ++, ?+)"),
)


def check_re2(pattern: str) -> None:
    """Raise ``ValueError`` saying why ``pattern`` is not an RE2 regex Envoy accepts."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    for construct, name in _UNSUPPORTED:
        if construct.search(pattern):
            raise ValueError(f"regex {pattern!r} uses {name}, which Envoy's RE2 does not support")
