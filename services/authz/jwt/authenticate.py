"""The JWT step of a Check: what Envoy's ``jwt_authn`` filter decides for Istio's rules.

Semantics (istio-policy-semantics.md §2.1-2.3, Envoy ``authenticator.cc``/``filter.cc``):

* no rules: nothing to do (``status="none"``);
* no token at any location: allowed but unauthenticated (``status="missing"``);
* every extracted token must be valid (a request with one good and one bad token
  is 401). A token is checked per location it was found at, against the rules that
  named that location: parse, then the issuer (no rule for its ``iss`` at that
  location is 401 ``Jwt issuer is not configured``), then time, then per candidate
  rule audience and signature. Rules of the same issuer are ORed: the first one
  (in rule order) that accepts the token wins and supplies the output headers; when
  none does, the first candidate's failure is reported (what Envoy's
  ``allow_missing`` branch, which looks providers up by issuer, reports);
* with several bad tokens the failure reported is the one of the token Envoy would
  check first: it pops tokens from the back of the extraction order;
* failures are 401 with jwt_verify_lib's string as the body, except a bad audience,
  403. Envoy also sends ``www-authenticate: Bearer realm="<scheme>://<host><path>"``
  (path truncated to 256 characters; ``, error="invalid_token"`` appended unless the
  status is "Jwt is missing") on both - ``filter.cc`` ``onComplete``,
  ``Http::Utility::buildOriginalUri``;
* on success: each non-forwarded token's header is removed and a query parameter
  token is removed from the path (cookies are left alone); ``outputPayloadToHeader``
  gets the payload section as sent; ``outputClaimToHeaders`` gets strings as-is,
  numbers as integers when integral (else ``%f``), booleans as ``true``/``false``,
  objects and lists as standard base64 of their compact JSON; absent, null and empty
  string claims add nothing. Client-sent copies of every output header of every rule
  are removed, also when no token is present (Envoy ``sanitizeHeaders`` runs before
  extraction).

**Applying the result to an ext_authz response:** Envoy applies ``headers_to_remove``
*after* the added headers, so ``headers_to_remove`` never names a header that
``headers_to_add`` sets; send ``headers_to_add`` with ``OVERWRITE_IF_EXISTS_OR_ADD``
so they replace client copies. ``headers_to_remove`` also matters for
``status="missing"``.

Verified tokens are cached per (token, location) - the location carries the rules
that may accept it - until the token's ``exp`` (+60 s skew, re-checked on every
hit) or ``max_cache_ttl`` for tokens without ``exp``; key-set changes do not evict
entries (Envoy's JWT cache behaves the same).
"""

import base64
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.authz.jwt.keys import JwksUnavailableError, KeyResolver, KeySource, RemoteKeySource
from services.authz.jwt.rules import JwtRule
from services.authz.jwt.status import (
    CLOCK_SKEW_SECONDS,
    JWKS_KID_ALG_MISMATCH,
    JWT_MISSED,
    JWT_UNKNOWN_ISSUER,
    JwtVerifyError,
)
from services.authz.jwt.tokens import TokenExtractor, TokenSource
from services.authz.jwt.verify import (
    ParsedJwt,
    VerifiedToken,
    audience_checker,
    check_audience,
    check_signature,
    check_time,
    issuer_allowed,
    parse_jwt,
    verified_token,
)
from services.authz.model import Header, HttpRequest
from services.clock import Clock, SystemClock

JwtStatus = Literal["none", "missing", "ok", "invalid"]

MAX_REALM_PATH = 256  # filter.cc MaximumUriLength
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_MAX_CACHE_TTL = 300.0
_MAX_PLANS = 256


@dataclass(frozen=True, slots=True)
class JwtResult:
    """The outcome of the JWT step; see the module docstring for how to apply it."""

    status: JwtStatus
    principal: str | None = None  # iss/sub of the first verified token (when it has a sub)
    issuer: str | None = None
    subject: str | None = None
    claims: dict[str, Any] | None = None  # verified payload, space-delimited claims split
    headers_to_add: tuple[Header, ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    query_params_to_remove: tuple[str, ...] = ()
    http_status: int = 0  # 401 or 403 when invalid
    body: str = ""  # the jwt_verify_lib status string when invalid
    response_headers: tuple[Header, ...] = ()  # www-authenticate when invalid
    tokens: tuple[VerifiedToken, ...] = ()  # every verified token, extraction order
    detail: str = ""  # where it failed, for logs

    @property
    def www_authenticate(self) -> str | None:
        for name, value in self.response_headers:
            if name == "www-authenticate":
                return value
        return None


NO_RULES = JwtResult(status="none")


def www_authenticate(request: HttpRequest, status: str) -> str:
    """Envoy's challenge: ``Bearer realm="<scheme>://<host><path[:256]>"`` plus
    ``, error="invalid_token"`` unless the token was missing."""
    path = request.path
    fragment = path.find("#")
    if fragment >= 0:
        path = path[:fragment]
    value = f'Bearer realm="{request.scheme}://{request.host}{path[:MAX_REALM_PATH]}"'
    if status != JWT_MISSED:
        value += ', error="invalid_token"'
    return value


def claim_header_value(payload: dict[str, Any], claim: str) -> str | None:
    """The text Envoy puts in an ``outputClaimToHeaders`` header, None for no header."""
    value: Any = payload
    for part in claim.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, dict | list):
        text = json.dumps(_integral(value), separators=(",", ":"), ensure_ascii=False)
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    return None


def _number_text(value: float) -> str:
    number = float(value)  # claims are protobuf doubles in Envoy
    if number < 0 or number >= 2.0**64 or not number.is_integer():
        return f"{number:f}"  # std::to_string(double)
    return str(int(number))


def _integral(value: Any) -> Any:
    """Integral floats as integers, as protobuf's JSON printer writes doubles."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class _Plan:
    """Per rule set: the merged token locations and the headers clients may not send."""

    __slots__ = ("audiences", "extractor", "missing", "rules", "sanitized")

    def __init__(self, rules: tuple[JwtRule, ...]) -> None:
        self.rules = rules
        self.extractor = TokenExtractor(rules)
        sanitized: dict[str, None] = {}
        for rule in rules:
            sanitized.update(dict.fromkeys(rule.output_headers))
        self.sanitized = tuple(sanitized)
        self.missing = JwtResult(status="missing", headers_to_remove=self.sanitized)
        self.audiences = {id(rule): audience_checker(rule.audiences) for rule in rules}


class _Verified:
    """A cache entry: the token accepted at one location, by which rule, and its effects."""

    __slots__ = ("deadline", "exp", "headers", "result", "rule", "source", "token")

    def __init__(
        self,
        source: TokenSource,
        rule: JwtRule,
        token: VerifiedToken,
        exp: int,
        headers: tuple[Header, ...],
        deadline: float,
    ) -> None:
        self.source = source  # keeps the location (and so its identity) alive
        self.rule = rule
        self.token = token
        self.exp = exp
        self.headers = headers
        self.deadline = deadline
        self.result: JwtResult | None = None  # the answer when this is the only token


class JwtAuthenticator:
    """Checks a request's tokens against the rules that apply to its workload."""

    def __init__(
        self,
        keys: KeySource | None = None,
        clock: Clock | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_cache_ttl: float = DEFAULT_MAX_CACHE_TTL,
    ) -> None:
        self._clock = clock or SystemClock()
        self._keys: KeySource = keys or KeyResolver(remote=RemoteKeySource(clock=self._clock))
        self._cache: OrderedDict[tuple[str, TokenSource], _Verified] = OrderedDict()
        self._cache_size = cache_size
        self._max_cache_ttl = max_cache_ttl
        self._plans: OrderedDict[tuple[int, ...], _Plan] = OrderedDict()
        self._last: tuple[Sequence[JwtRule], _Plan] | None = None

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    async def aclose(self) -> None:
        """Stop background JWKS fetches."""
        close = getattr(self._keys, "aclose", None)
        if close is not None:
            await close()

    async def authenticate(self, rules: Sequence[JwtRule], request: HttpRequest) -> JwtResult:
        """Run the JWT step for ``request`` (pass the same rule objects every time: the
        per-rule-set plan and the token cache are keyed by their identity)."""
        if not rules:
            return NO_RULES
        plan = self._plan(rules)
        tokens = plan.extractor.extract(request)
        if not tokens:
            return plan.missing
        now = self._clock.now()
        monotonic = self._clock.monotonic()
        if len(tokens) == 1 and len(tokens[0].sources) == 1:  # the common case, fast
            only = tokens[0]
            entry = self._cached(only.token, only.sources[0], now, monotonic)
            if entry is not None:
                if entry.result is None:
                    entry.result = self._accepted(plan, [entry])
                return entry.result
        found = [(t.token, source) for t in tokens for source in t.sources]
        accepted: list[_Verified] = []
        parsed: dict[str, ParsedJwt] = {}
        for token, source in reversed(found):  # Envoy verifies from the back
            entry = self._cached(token, source, now, monotonic)
            if entry is None:
                try:
                    entry = await self._verify(plan, token, source, parsed, now, monotonic)
                except JwtVerifyError as exc:
                    return self._invalid(request, exc, source)
            accepted.append(entry)
        accepted.reverse()
        return self._accepted(plan, accepted)

    def _plan(self, rules: Sequence[JwtRule]) -> _Plan:
        last = self._last
        if last is not None and last[0] is rules and type(rules) is tuple:  # immutable: safe
            return last[1]
        key = tuple(map(id, rules))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(tuple(rules))  # holds the rules: ids stay unique
            if len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        self._last = (rules, plan)  # holds ``rules``: its id cannot be reused meanwhile
        return plan

    def _cached(
        self, token: str, source: TokenSource, now: float, monotonic: float
    ) -> _Verified | None:
        key = (token, source)
        entry = self._cache.get(key)
        if entry is None:
            return None
        if monotonic >= entry.deadline or (entry.exp and int(now) > entry.exp + CLOCK_SKEW_SECONDS):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry

    async def _verify(
        self,
        plan: _Plan,
        token: str,
        source: TokenSource,
        parsed: dict[str, ParsedJwt],
        now: float,
        monotonic: float,
    ) -> _Verified:
        jwt = parsed.get(token)
        if jwt is None:
            jwt = parsed[token] = parse_jwt(token)
        candidates = [rule for rule in source.rules if issuer_allowed(rule.issuer, jwt)]
        if not candidates:
            raise JwtVerifyError(JWT_UNKNOWN_ISSUER, f"iss {jwt.issuer!r}")
        check_time(jwt, now)
        first_failure: JwtVerifyError | None = None
        for rule in candidates:
            try:
                check_audience(jwt, plan.audiences[id(rule)])
                await self._check_signature(jwt, rule)
            except JwtVerifyError as exc:
                if not exc.detail:
                    exc.detail = rule.source
                first_failure = first_failure or exc
                continue
            return self._remember(token, source, rule, jwt, monotonic)
        assert first_failure is not None
        raise first_failure

    async def _check_signature(self, jwt: ParsedJwt, rule: JwtRule) -> None:
        try:
            keys = await self._keys.keys(rule)
            try:
                check_signature(jwt, keys)
            except JwtVerifyError as exc:
                if exc.status != JWKS_KID_ALG_MISMATCH or not jwt.kid:
                    raise
                fresh = await self._keys.refresh(rule)  # an unknown kid: keys may have rotated
                if fresh is keys:
                    raise
                check_signature(jwt, fresh)
        except JwksUnavailableError as exc:
            raise JwtVerifyError(exc.status, exc.detail) from None

    def _remember(
        self, token: str, source: TokenSource, rule: JwtRule, jwt: ParsedJwt, monotonic: float
    ) -> _Verified:
        verified = verified_token(jwt, rule.space_delimited_claims)
        headers: list[Header] = []
        if rule.output_payload_to_header:
            headers.append((rule.output_payload_to_header.lower(), jwt.payload_b64))
        for header, claim in rule.output_claim_to_headers:
            value = claim_header_value(jwt.payload, claim)
            if value is not None:
                headers.append((header.lower(), value))
        deadline = float("inf") if jwt.exp else monotonic + self._max_cache_ttl
        entry = _Verified(source, rule, verified, jwt.exp, tuple(headers), deadline)
        key = (token, source)
        self._cache[key] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def _invalid(self, request: HttpRequest, exc: JwtVerifyError, source: TokenSource) -> JwtResult:
        detail = f"{source.location}" + (f": {exc.detail}" if exc.detail else "")
        return JwtResult(
            status="invalid",
            http_status=exc.http_status,
            body=exc.status,
            response_headers=(("www-authenticate", www_authenticate(request, exc.status)),),
            detail=detail,
        )

    def _accepted(self, plan: _Plan, accepted: list[_Verified]) -> JwtResult:
        added: dict[Header, None] = {}
        removed: dict[str, None] = dict.fromkeys(plan.sanitized)
        params: dict[str, None] = {}
        for entry in accepted:
            added.update(dict.fromkeys(entry.headers))
            if entry.rule.forward_original_token:
                continue
            location = entry.source.location
            if location.kind == "header":
                removed[location.name] = None
            elif location.kind == "param":
                params[location.name] = None
        headers_to_add = tuple(added)
        set_names = {name for name, _ in headers_to_add}
        first = accepted[0].token
        return JwtResult(
            status="ok",
            principal=first.principal,
            issuer=first.issuer,
            subject=first.subject,
            claims=first.claims,
            headers_to_add=headers_to_add,
            headers_to_remove=tuple(name for name in removed if name not in set_names),
            query_params_to_remove=tuple(params),
            tokens=tuple(entry.token for entry in accepted),
        )
