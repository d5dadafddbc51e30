"""Finding tokens in a request exactly where Envoy's ``jwt_authn`` extractor looks.

Behaviour mirrored from Envoy ``source/extensions/filters/http/jwt_authn/extractor.cc``
(1.29 and later):

* Locations are merged across rules like Envoy's ``ExtractorImpl``: one header
  location per (header name, prefix), one per query parameter, one per cookie, each
  remembering which rules named it (Envoy's per-location issuer checker). A rule
  that names no location gets ``Authorization`` with prefix ``"Bearer "`` and the
  ``access_token`` query parameter.
* Header names are case-insensitive (the request's are lower-case already). The
  prefix is case-sensitive and is searched **anywhere** in the value
  (``value.find(prefix)``); if it is absent the location yields nothing, so
  ``bearer x``, ``Basic ...`` or a bare token count as *no token*, not as an error.
* After the prefix, characters that cannot start a JWT are skipped and the token is
  **the rest of the value**: since Envoy 1.29 (runtime guard
  ``envoy.reloadable_features.token_passed_entirely``, removed in 1.31) the token is
  no longer cut at the first non-base64url character, so ``Bearer <jwt>, x`` yields
  ``<jwt>, x`` and fails verification. If nothing JWT-like follows the prefix, the
  whole header value is the token (Envoy's "backwards compatibility" branch). An
  empty prefix takes the whole value.
* A header sent several times reaches us joined with ``,`` (that is how Envoy
  hands it to ext_authz); it is treated as one value. Envoy itself would look at each
  value separately, so ``Bearer a`` + ``Bearer b`` is one malformed token here
  (401) where Envoy would verify two tokens: the stricter reading.
* Query parameters: from the first ``?`` (up to a ``#``), split on ``&``, name and
  value percent-decoded (``+`` is not a space), the *first* value of a name wins; a
  name without ``=`` has the empty value.
* Cookies: the ``cookie`` header split on ``;``, leading spaces dropped, one pair of
  surrounding double quotes removed from the value, the first cookie of a name wins.
* Order: header locations sorted by name+prefix, then parameters sorted, then
  cookies sorted, as Envoy's ordered maps produce them.
"""

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeVar
from urllib.parse import unquote

from services.authz.jwt.rules import JwtRule
from services.authz.model import HttpRequest

LocationKind = Literal["header", "param", "cookie"]
_K = TypeVar("_K", bound=Hashable)

_JWT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True, slots=True)
class TokenLocation:
    """Where a token was found: a header (with its prefix), a query parameter or a cookie."""

    kind: LocationKind
    name: str  # lower-case header name, parameter name or cookie name
    prefix: str = ""  # header value prefix; "" for parameters and cookies

    def __str__(self) -> str:
        if self.kind == "header":
            return f"header {self.name}" + (f" ({self.prefix!r})" if self.prefix else "")
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class TokenSource:
    """A location and the rules that named it; only those rules' issuers may sign a token
    found there.

    Compared by value and hashed once, when the plan is compiled: ``(token, source)``
    is the verified-token cache key, so a token accepted here is reused by any plan
    (another workload, a reloaded policy set) whose location has rules *equal in
    value*, and never by one whose rules differ in any field.
    """

    location: TokenLocation
    rules: tuple[JwtRule, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.location, self.rules)))

    def __hash__(self) -> int:
        return self._hash


class ExtractedToken(NamedTuple):
    """One distinct token string and every location it was found at (Envoy order).

    A ``NamedTuple``: one is made per request, at half a frozen dataclass's cost.
    """

    token: str
    sources: tuple[TokenSource, ...]


class TokenExtractor:
    """The merged token locations of a set of rules; ``extract`` runs per request."""

    __slots__ = ("_cookies", "_headers", "_params", "rules")

    def __init__(self, rules: Iterable[JwtRule]) -> None:
        self.rules = tuple(rules)
        headers: dict[tuple[str, str], list[JwtRule]] = {}
        params: dict[str, list[JwtRule]] = {}
        cookies: dict[str, list[JwtRule]] = {}
        for rule in self.rules:
            for key in rule.header_locations:
                _add(headers, key, rule)
            for name in rule.param_locations:
                _add(params, name, rule)
            for name in rule.from_cookies:
                _add(cookies, name, rule)
        self._headers = tuple(
            TokenSource(TokenLocation("header", name, prefix), tuple(found))
            for (name, prefix), found in sorted(headers.items(), key=lambda i: i[0][0] + i[0][1])
        )
        self._params = tuple(
            TokenSource(TokenLocation("param", name), tuple(found))
            for name, found in sorted(params.items())
        )
        self._cookies = tuple(
            TokenSource(TokenLocation("cookie", name), tuple(found))
            for name, found in sorted(cookies.items())
        )

    @property
    def sources(self) -> tuple[TokenSource, ...]:
        """Every location, in extraction order."""
        return self._headers + self._params + self._cookies

    def extract(self, request: HttpRequest) -> tuple[ExtractedToken, ...]:
        """Every token the request carries at these locations, grouped by token string."""
        found: list[tuple[str, TokenSource]] = []
        headers = request.headers
        for source in self._headers:
            value = headers.get(source.location.name)
            if value is None:
                continue
            token = header_token(value, source.location.prefix)
            if token is not None:
                found.append((token, source))
        if self._params:
            query = _query(request.path)
            # parse only when a parameter name (or an escape) can be in there
            if query is not None and (
                "%" in query or any(s.location.name in query for s in self._params)
            ):
                values = parse_query(query)
                for source in self._params:
                    param = values.get(source.location.name)
                    if param is not None:
                        found.append((param, source))
        if self._cookies:
            cookie_header = headers.get("cookie")
            if cookie_header is not None:
                jar = parse_cookies(cookie_header)
                for source in self._cookies:
                    cookie = jar.get(source.location.name)
                    if cookie is not None:
                        found.append((cookie, source))
        if not found:
            return ()
        if len(found) == 1:
            token, source = found[0]
            return (ExtractedToken(token, (source,)),)
        grouped: dict[str, list[TokenSource]] = {}
        for token, source in found:
            grouped.setdefault(token, []).append(source)
        return tuple(ExtractedToken(token, tuple(sources)) for token, sources in grouped.items())


def extract_tokens(rules: Sequence[JwtRule], request: HttpRequest) -> tuple[ExtractedToken, ...]:
    """One-shot form of ``TokenExtractor(rules).extract(request)``."""
    return TokenExtractor(rules).extract(request)


def header_token(value: str, prefix: str) -> str | None:
    """The token in one header value, or None when the prefix is absent (Envoy
    ``extract`` + ``extractJWT``)."""
    if not prefix:
        return value
    position = value.find(prefix)
    if position < 0:
        return None
    start = position + len(prefix)
    end = len(value)
    while start < end and value[start] not in _JWT_CHARS:
        start += 1
    if start == end:
        return value  # nothing JWT-like after the prefix: Envoy passes the value as-is
    return value[start:]


def parse_query(query: str) -> dict[str, str]:
    """First value of each parameter, names and values percent-decoded (Envoy
    ``QueryParamsMulti::parseAndDecodeQueryString`` + ``getFirstValue``)."""
    values: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, equals, value = part.partition("=")
        name = unquote(name) if "%" in name else name
        if name in values:
            continue
        if equals:
            values[name] = unquote(value) if "%" in value else value
        else:
            values[name] = ""
    return values


def parse_cookies(header: str) -> dict[str, str]:
    """First value of each cookie (Envoy ``Http::Utility::parseCookies``)."""
    jar: dict[str, str] = {}
    for pair in header.split(";"):
        if not pair:
            continue
        equals = pair.find("=")
        if equals < 0:
            continue
        name = pair[:equals].lstrip(" ")
        value = pair[equals + 1 :]
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        jar.setdefault(name, value)
    return jar


def remove_query_params(path: str, names: Iterable[str]) -> str:
    """``path`` without the named query parameters (every value), as Envoy's
    ``JwtParamLocation::removeJwt`` rewrites it; handy for tests and dry runs."""
    query_start = path.find("?")
    if query_start < 0:
        return path
    drop = set(names)
    fragment_start = path.find("#", query_start)
    query = path[query_start + 1 : fragment_start if fragment_start >= 0 else len(path)]
    kept = [p for p in query.split("&") if p and unquote(p.partition("=")[0]) not in drop]
    return path[:query_start] + ("?" + "&".join(kept) if kept else "")


def _query(path: str) -> str | None:
    start = path.find("?")
    if start < 0:
        return None
    end = path.find("#", start)
    return path[start + 1 : end] if end >= 0 else path[start + 1 :]


def _add(table: dict[_K, list[JwtRule]], key: _K, rule: JwtRule) -> None:
    found = table.setdefault(key, [])
    if not any(existing is rule for existing in found):
        found.append(rule)
