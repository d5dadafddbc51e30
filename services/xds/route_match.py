"""A Gateway route's ``match``: which requests take the route.

```yaml
match: {prefix: /product, methods: [GET], headers: [{name: x-env, exact: canary}]}
```

At most one of ``prefix``, ``exact`` and ``regex`` (none: ``prefix: /``); every regex is
compiled with RE2 as Envoy compiles it, so what Envoy would refuse is refused at load.
"""

from dataclasses import dataclass

from services.policy.fields import Fields
from services.policy.re2 import check_re2

HEADER_MATCH_KINDS = ("exact", "prefix", "suffix", "regex", "present")


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    kind: str  # one of HEADER_MATCH_KINDS
    value: str = ""
    invert: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    prefix: str | None = None
    exact: str | None = None
    regex: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()


def _regex(fields: Fields, key: str, pattern: str) -> None:
    try:
        check_re2(pattern)
    except ValueError as exc:
        fields.error(key, str(exc))


def read_match(route: Fields) -> RouteMatch:
    """The route's ``match`` (absent: every path, ``prefix: /``); errors go to the sink."""
    match = route.child(
        "match", what="match", allowed={"prefix", "exact", "regex", "methods", "headers"}
    )
    if match is None:
        return RouteMatch(prefix="/")
    paths = [k for k in ("prefix", "exact", "regex") if k in match]
    if len(paths) > 1:
        match.error(paths[1], "only one of prefix, exact or regex may be set")
    prefix, exact, regex = match.text("prefix") or None, match.text("exact") or None, None
    for key, value in (("prefix", prefix), ("exact", exact)):
        if value is not None and not value.startswith("/"):
            match.error(key, f"'{value}' must start with /")
    if "regex" in match:
        regex = match.text("regex")
        _regex(match, "regex", regex)
    if not paths:
        prefix = "/"
    methods = match.strings("methods")
    for method in methods:
        if not method.isupper():
            match.error("methods", f"method '{method}' must be upper-case")
    headers = []
    for header in match.children(
        "headers", what="header match", allowed={"name", "invert", *HEADER_MATCH_KINDS}
    ):
        name = header.text("name", required=True).lower()
        kinds = [k for k in HEADER_MATCH_KINDS if k in header]
        if len(kinds) != 1:
            header.missing(
                "exact", f"a header match needs exactly one of {', '.join(HEADER_MATCH_KINDS)}"
            )
            continue
        kind = kinds[0]
        if kind == "present":
            value = "true" if header.flag("present", default=True) else "false"
        else:
            value = header.text(kind, required=True)
            if kind == "regex":
                _regex(header, "regex", value)
        headers.append(HeaderMatch(name, kind, value, header.flag("invert")))
    return RouteMatch(prefix, exact, regex, methods, tuple(headers))
