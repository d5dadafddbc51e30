"""What a Check of one workload reads, up to and including RBAC: the decision cache's key.

A decision cache is only safe when its key holds every value the decision depends on
(Istio 1.0.5 had to turn Mixer's server-side cache off because results were filed under
a coarser key; reference: quota-leases-and-decision-caches.md, section 1.4). So the key
is not written by hand: ``compile_reads`` derives it, once per ``WorkloadPlan``, from
what the stages do for that plan, and ``ReadSet.key`` extracts exactly those values from
a ``CheckInput`` as a plain tuple. The cache compares keys in full (a dict), never by a
hash alone and never as a joined string, so two keys are equal only when every value is.

What the stages read (``stages.normalize``, ``stages.authenticate`` with the real
``JwtAuthenticator``, ``decide.rbac``):

* normalize, always: the ``http`` flag, whether the method is upper-case and the
  ``:path`` is one Envoy accepts. A request refused there gets no key (``None``): it is
  answered at once and is not worth caching.
* RBAC, per compiled ``Check`` of every AUDIT, DENY, ALLOW and dry-run policy (dry-run
  CUSTOM ones included: they are matched for the audit notes, never sent anywhere):
  the attribute its field or ``when`` key names (``_FIELD_READS``), and for
  ``request.headers[name]`` that header, with its repeated values.
* JWT, when the plan has rules: whether the request is a CORS preflight (which skips the
  step) and the tokens the plan's extractor finds (header, query parameter and cookie
  locations, exactly as ``TokenExtractor`` finds them). The verified identity
  (``requestPrincipals``, ``request.auth.*``) is a function of those tokens, so it needs
  no slot of its own. Without JWT rules it is always absent.

Values are taken as the stages see them, after normalization: the lower-cased host, the
trusted client address (from X-Forwarded-For only when ``numTrustedProxies`` is above 0),
so requests that differ only in ways normalization erases share an entry.

**Paths are keyed by what the policies ask of them.** ``paths``/``notPaths`` are the only
readers of the normalized path, so the key holds, for each distinct path matcher of the
plan, whether the path matches it (``path_tests``), not the path itself: ``/product/1``
and ``/product/2`` share an entry wherever no policy tells them apart. REST paths carry
ids, and a key holding the path would miss on almost every request. The raw ``:path``
(``request.headers[:path]``) is still keyed as it is.

Nothing else is in a key: a header no policy names, a port no policy reads, the body
(nothing up to RBAC reads it; CUSTOM providers may, and a plan with enforced CUSTOM
policies is not cacheable at all), and a rejected token's ``www-authenticate`` realm
(scheme, host and ``:path``): a rejected token is never cached (``ttl_cap``), and
equal keys hold equal tokens, so two requests with one key are both rejected or both
not. The property that holds is therefore: equal keys give equal decisions whenever
either decision may be cached (``tests/property/test_decision_cache_keys.py``).

Time is not in the key: a verified token's result holds until its ``exp``, so an entry
must not outlive it (``ttl_cap``).
"""

import math
from dataclasses import dataclass, field, replace
from typing import Final

from services.authz.answer import Denial
from services.authz.authorization_policy import AuthorizationPolicy
from services.authz.client_address import trusted_client_address
from services.authz.jwt.result import JwtResult
from services.authz.matchers import PathMatcher
from services.authz.mesh_config import MeshSettings
from services.authz.model import CheckInput
from services.authz.paths import InvalidPathError, PathNormalization, full_path_with_query
from services.authz.plan import WorkloadPlan

__all__ = ["DEFAULT_MAX_KEY_CHARS", "DecisionKey", "ReadSet", "compile_reads", "ttl_cap"]

DecisionKey = tuple[object, ...]
"""A plain tuple of hashable values, compared in full by the cache's dict."""

PATH_MEMO_ENTRIES: Final = 4096
PATH_MEMO_MAX_CHARS: Final = 512
"""Paths up to this long have their matcher answers remembered per ReadSet, at most this
many at a time (a full memo is emptied): at most 2 MiB of paths per plan."""

DEFAULT_MAX_KEY_CHARS: Final = 8192
"""Requests whose key would hold more characters than this are not cached, so the cache's
memory is bounded by its entry count times this (Envoy accepts 60 KiB of headers)."""

# What each compiled Check name reads. Source and operation checks are named after their
# field (``notX`` shares X's Check); ``when`` checks after their key.
_METHOD = "method"
_HOST = "host"
_PATH = "path"  # normalized, without the query: keyed by the plan's path matchers
_PATH_WITH_QUERY = "path_with_query"  # the :path header as RBAC sees it
_SOURCE_IP = "source_ip"
_REMOTE_IP = "remote_ip"
_SOURCE_PRINCIPAL = "source_principal"
_DESTINATION_IP = "destination_ip"
_DESTINATION_PORT = "destination_port"
_SNI = "sni"
_IDENTITY = "identity"  # the verified JWT: keyed by the tokens themselves

_FIELD_READS: Final[dict[str, str]] = {
    # from.source
    "principals": _SOURCE_PRINCIPAL,
    "namespaces": _SOURCE_PRINCIPAL,
    "serviceAccounts": _SOURCE_PRINCIPAL,
    "requestPrincipals": _IDENTITY,
    "ipBlocks": _SOURCE_IP,
    "remoteIpBlocks": _REMOTE_IP,
    # to.operation
    "hosts": _HOST,
    "ports": _DESTINATION_PORT,
    "methods": _METHOD,
    "paths": _PATH,
    # when
    "source.ip": _SOURCE_IP,
    "remote.ip": _REMOTE_IP,
    "source.namespace": _SOURCE_PRINCIPAL,
    "source.principal": _SOURCE_PRINCIPAL,
    "source.serviceAccount": _SOURCE_PRINCIPAL,
    "source.trustDomain": _SOURCE_PRINCIPAL,
    "request.auth.principal": _IDENTITY,
    "request.auth.audiences": _IDENTITY,
    "request.auth.presenter": _IDENTITY,
    "destination.ip": _DESTINATION_IP,
    "destination.port": _DESTINATION_PORT,
    "connection.sni": _SNI,
}
_HEADER_KEY = "request.headers["
_CLAIM_KEY = "request.auth.claims["
# ``Attributes.header`` answers these names from other attributes when no header of that
# name was sent; the key then needs those attributes too.
_PSEUDO_HEADERS: Final[dict[str, str]] = {
    ":path": _PATH_WITH_QUERY,
    ":method": _METHOD,
    ":authority": _HOST,
    "host": _HOST,
}


@dataclass(frozen=True, slots=True, eq=False)
class ReadSet:
    """What a Check of ``plan``'s workload reads up to RBAC, and how to key on it.

    Compiled once per plan (``compile_reads``); ``key`` runs per request. Compared by
    identity, like the plan it belongs to.
    """

    plan: WorkloadPlan = field(repr=False)
    scope: tuple[WorkloadPlan, str, int] = field(repr=False)  # every key's first element
    normalization: PathNormalization  # the mesh's, as normalize applies it
    trusted_proxies: int  # the mesh's numTrustedProxies
    uncacheable: str  # why no request of this plan may be cached; "" when it may
    method: bool
    host: bool
    path_tests: tuple[PathMatcher, ...]  # the plan's distinct path matchers, in a fixed order
    path_with_query: bool
    headers: tuple[str, ...]  # request.headers[...] names, lower-case, sorted
    source_ip: bool
    remote_ip: bool
    source_principal: bool
    destination_ip: bool
    destination_port: bool
    sni: bool
    jwt: bool  # the plan has JWT rules: CORS preflight, tokens
    max_key_chars: int = DEFAULT_MAX_KEY_CHARS
    # What the path matchers answer, by path: a pure function of the path and this plan,
    # so remembering it is safe; lives and dies with the ReadSet (one per plan per set).
    path_answers: dict[str, tuple[bool, ...]] = field(default_factory=dict, repr=False)

    @property
    def cacheable(self) -> bool:
        """Whether any request of this plan may be served from a decision cache."""
        return not self.uncacheable

    def key(self, check: CheckInput) -> DecisionKey | None:
        """The values of ``check`` that the stages up to RBAC read, as one tuple; None
        when the request must not be cached (plan not cacheable, refused by normalize,
        or a key longer than ``max_key_chars``).

        Slots are positional and fixed per ReadSet (``scope`` names it), so a value can
        never be mistaken for another slot's; an absent header is ``None``, not ``""``.
        """
        if self.uncacheable or not check.http:
            return None
        request = check.request
        method = request.method
        if not method.isupper():  # normalize refuses it: 400
            return None
        try:
            path_with_query = full_path_with_query(request.path, self.normalization)
        except InvalidPathError:  # normalize refuses it: 400
            return None
        context = check.context
        # What ``AuthzConfig.plan`` reads to pick the plan: redundant with ``scope`` but it
        # keeps a key self-describing.
        parts: list[object] = [
            self.scope,
            context.get("namespace", ""),
            context.get("labels"),
            context.get("gateway", ""),
        ]
        size = 0
        if self.method:
            parts.append(method)
        if self.host:
            host = request.host.lower()
            parts.append(host)
            size += len(host)
        if self.path_with_query:
            parts.append(path_with_query)
            size += len(path_with_query)
        if self.path_tests:
            path = path_with_query.partition("?")[0]
            answers = self.path_answers.get(path)
            if answers is None:
                answers = self._path_answers(path)
            parts.append(answers)
        headers = request.headers
        if self.headers:
            repeated = request.repeated
            for name in self.headers:
                value = headers.get(name)
                values = repeated.get(name)
                parts.append(value)
                parts.append(values)
                if value is not None:
                    size += len(value)
                if values is not None:
                    size += sum(len(v) for v in values)
        source = check.source
        if self.source_ip:
            parts.append(source.address)
        if self.remote_ip:
            # Envoy's trusted client address: XFF matters only with trusted proxies.
            parts.append(
                trusted_client_address(
                    source.address, headers.get("x-forwarded-for"), self.trusted_proxies
                )
            )
        if self.source_principal:
            parts.append(source.principal)
            size += len(source.principal)
        destination = check.destination
        if self.destination_ip:
            parts.append(destination.address)
        if self.destination_port:
            parts.append(destination.port)
        if self.sni:
            parts.append(check.sni)
            size += len(check.sni)
        if self.jwt:
            # Istio's jwt_authn skips CORS preflights (stages._cors_preflight).
            parts.append(
                method == "OPTIONS"
                and "origin" in headers
                and "access-control-request-method" in headers
            )
            # The JWT step sees the normalized :path (query kept), as Envoy hands it on.
            seen = (
                request
                if path_with_query == request.path
                else replace(request, path=path_with_query)
            )
            tokens = self.plan.jwt.extractor.extract(seen)
            parts.append(tokens)
            for found in tokens:
                size += len(found.token)
        if size > self.max_key_chars:
            return None
        return tuple(parts)

    def _path_answers(self, path: str) -> tuple[bool, ...]:
        """What each path matcher answers for ``path``, remembered if the path is short.

        Handler threads share the memo: a dict's get, set and clear are each atomic, and a
        lost entry only costs the matchers' work again.
        """
        answers = tuple([test.matches(path) for test in self.path_tests])
        if len(path) <= PATH_MEMO_MAX_CHARS:
            memo = self.path_answers
            if len(memo) >= PATH_MEMO_ENTRIES:
                memo.clear()
            memo[path] = answers
        return answers


def compile_reads(
    plan: WorkloadPlan, mesh: MeshSettings, *, max_key_chars: int = DEFAULT_MAX_KEY_CHARS
) -> ReadSet:
    """What a Check of ``plan``'s workload reads, under ``mesh`` (the config's settings)."""
    reads: set[str] = set()
    headers: set[str] = set()
    unknown: list[str] = []
    path_tests: dict[tuple[str, ...], PathMatcher] = {}
    for policy in (*plan.audit, *plan.deny, *plan.allow, *plan.dry_run):
        _policy_reads(policy, reads, headers, unknown, path_tests)
    uncacheable = ""
    if plan.custom:
        # Enforced CUSTOM policies ask a provider over the network, with the request
        # (its body too, if configured) and its answer may change any time.
        uncacheable = f"CUSTOM policy {plan.custom[0].key} asks an external provider"
    elif unknown:
        uncacheable = f"reads {unknown[0]}, which the decision cache cannot key on"
    return ReadSet(
        plan=plan,
        # The mode's name, not the enum: a str hashes in C, an Enum member in Python.
        scope=(plan, mesh.path_normalization.value, mesh.num_trusted_proxies),
        normalization=mesh.path_normalization,
        trusted_proxies=mesh.num_trusted_proxies,
        uncacheable=uncacheable,
        method=_METHOD in reads,
        host=_HOST in reads,
        path_tests=tuple(path_tests.values()),
        path_with_query=_PATH_WITH_QUERY in reads,
        headers=tuple(sorted(headers)),
        source_ip=_SOURCE_IP in reads,
        remote_ip=_REMOTE_IP in reads,
        source_principal=_SOURCE_PRINCIPAL in reads,
        destination_ip=_DESTINATION_IP in reads,
        destination_port=_DESTINATION_PORT in reads,
        sni=_SNI in reads,
        jwt=bool(plan.jwt_rules),
        max_key_chars=max_key_chars,
    )


def _policy_reads(
    policy: AuthorizationPolicy,
    reads: set[str],
    headers: set[str],
    unknown: list[str],
    path_tests: dict[tuple[str, ...], PathMatcher],
) -> None:
    """Add what ``policy``'s checks read: attribute names to ``reads``, header names to
    ``headers``, path matchers to ``path_tests`` (one per distinct pattern list); a check
    this module does not know goes to ``unknown``."""
    for rule in policy.rules:
        checks = [*rule.conditions]
        for entries in (rule.sources or (), rule.operations or ()):
            for entry in entries:
                checks.extend(entry)
        for check in checks:
            name = check.name
            found = _FIELD_READS.get(name)
            if found == _PATH:
                for test in (check.positive, check.negative):
                    if isinstance(test, PathMatcher):
                        path_tests.setdefault(test.patterns, test)
                    elif test is not None:
                        unknown.append(f"'{name}' ({policy.key})")
            elif found is not None:
                reads.add(found)
            elif name.startswith(_HEADER_KEY) and name.endswith("]"):
                header = name[len(_HEADER_KEY) : -1].lower()  # as the compiled getter does
                headers.add(header)
                pseudo = _PSEUDO_HEADERS.get(header)
                if pseudo is not None:
                    reads.add(pseudo)
            elif name.startswith(_CLAIM_KEY):
                reads.add(_IDENTITY)
            else:
                unknown.append(f"'{name}' ({policy.key})")


def ttl_cap(token: JwtResult | Denial, now: float) -> float | None:
    """How long, in seconds from ``now`` (wall clock), the outcome of a Check whose JWT
    step answered ``token`` may be served from the cache; None: do not cache it.

    * a rejected token (``Denial``): never cached. Some rejections are only true for now
      (a JWKS fetch failed, a ``kid`` the key set does not have yet, ``nbf`` ahead),
      and a cache must not turn a passing failure into a lasting one;
    * verified tokens: until the earliest ``exp`` among them, so a cached allow is gone
      by the time the token expires (the uncached path accepts ``exp`` plus 60 s of clock
      skew, so what follows is a fresh evaluation, not a different answer);
    * no token, no rules, a token without ``exp``: no cap (infinity; the cache's own TTL
      applies).
    """
    if isinstance(token, Denial) or token.status == "invalid":
        return None
    cap = math.inf
    for verified in token.tokens:
        if verified.expires_at is not None:
            cap = min(cap, verified.expires_at - now)
    return cap if cap > 0 else None
