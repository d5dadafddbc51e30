"""Quotas counted inside Check: one hop, where Envoy's ratelimit filter would be a second.

A gateway's ``RateLimitPolicy`` covers some of its routes. The catalog compiles it into a
``QuotaRule`` per covered route (``QuotaRules``, keyed by gateway and route), and the xds
service names the route in the Check's context extensions instead of giving Envoy the
policy's rate limit actions. An allowed Check on such a route then builds the very
descriptors those actions would have built (``descriptors``) and counts them through a
``QuotaCounter``: the rate limit service of this process, on its counter store, so one hop
and two hops count the same keys with the same windows and shadow mode.

Authorization comes first: a denied request (401, 403) is never counted, as with two hops.
Over quota, the request is refused as Envoy's filter refuses it (429 and its headers);
within quota it carries the filter's headers to the client. When the store cannot count,
each rule's ``on_store_failure`` decides (``deny`` unless a covering rule says ``allow``);
the authorization decision itself never changes.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from services.authz.model import Header, HttpRequest

Entries = tuple[tuple[str, str], ...]
ANONYMOUS = "anonymous"  # what Envoy's metadata action sends without a verified subject
# Where the rules' count-by values come from (``count_from``).
SOURCES = ("", "subject", "claim", "clientAddress", "header")


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One policy on one route: which requests it counts, and the descriptor it counts."""

    domain: str  # the gateway's rate limit domain
    policy: str  # the ``policy`` entry: the RateLimitPolicy's namespace/name
    path: Callable[[str], bool] | None = None  # :path test (RE2 full match), if any
    method: Callable[[str], bool] | None = None
    headers: tuple[tuple[str, str], ...] = ()  # (name, exact value, or "*": present)
    count_key: str = ""  # the descriptor key of the counted value, "" for one counter
    count_from: str = ""  # one of SOURCES
    count_name: str = ""  # the claim or header
    deny_on_store_failure: bool = True

    @property
    def reads_headers(self) -> bool:
        """Whether the request's headers (as ext_authz leaves them) decide this rule."""
        return bool(self.headers) or self.count_from == "header"

    def matches(self, request: HttpRequest) -> bool:
        """Envoy's ``header_value_match`` action: every listed test holds."""
        if self.path is not None and not self.path(request.path):
            return False
        if self.method is not None and not self.method(request.method):
            return False
        for name, value in self.headers:
            found = request.headers.get(name)
            if found is None or (value != "*" and found != value):
                return False
        return True

    def descriptor(
        self, request: HttpRequest, metadata: Mapping[str, object] | None, client: str
    ) -> Entries | None:
        """The entries Envoy's route actions would send, or None when they send none."""
        if not self.matches(request):
            return None
        entries: list[tuple[str, str]] = [("policy", self.policy)]
        if self.path is not None or self.method is not None or self.headers:
            entries.append(("match", "yes"))
        source = self.count_from
        if source == "subject":
            entries.append((self.count_key, _metadata_text(metadata, ("subject",))))
        elif source == "claim":
            entries.append(
                (self.count_key, _metadata_text(metadata, ("claim_text", self.count_name)))
            )
        elif source == "clientAddress":
            entries.append(("remote_address", client))
        elif source == "header":
            value = request.headers.get(self.count_name)
            if value is None:  # request_headers: no header, no descriptor
                return None
            entries.append((self.count_key, value))
        return tuple(entries)


def _metadata_text(metadata: Mapping[str, object] | None, path: tuple[str, ...]) -> str:
    """What the metadata action reads at ``path``: a string, else its ``default_value``."""
    found: object = metadata
    for key in path:
        if not isinstance(found, Mapping) or key not in found:
            return ANONYMOUS
        found = found[key]
    return found if isinstance(found, str) and found else ANONYMOUS


class QuotaAnswer(NamedTuple):
    """What counting said: over quota or not, and the headers the client gets either way."""

    over: bool
    headers: tuple[Header, ...] = ()


class QuotaUnavailable(Exception):
    """The counter store could not count."""


class QuotaCounter(Protocol):
    """Counts one request's descriptors in a domain (hits 1) and answers like the filter."""

    async def __call__(self, domain: str, descriptors: Sequence[Entries]) -> QuotaAnswer: ...


QuotaRules = Mapping[tuple[str, str], tuple[QuotaRule, ...]]  # (gateway, route) -> rules
NO_QUOTAS: QuotaRules = {}


def route_rules(quotas: QuotaRules, context: Mapping[str, str]) -> tuple[QuotaRule, ...]:
    """The rules of the route a Check's context extensions name (none without a route)."""
    route = context.get("route")
    if route is None or not quotas:
        return ()
    return quotas.get((context.get("gateway", ""), route), ())


# Envoy's ratelimit filter (ratelimit.cc): over limit, a local reply with its default
# ``rate_limited_status`` and an empty body (the x-ratelimit headers come with the counts);
# with failure_mode_deny and counts that could not be made, ``status_on_error``: 500, an
# empty body, no headers.
RATE_LIMITED_STATUS = 429
STORE_FAILURE_STATUS = 500
STORE_FAILURE_HEADERS: tuple[Header, ...] = ()


def upstream_view(
    request: HttpRequest, upstream: Sequence[Header], removed: Sequence[str]
) -> HttpRequest:
    """The request as a filter after ext_authz sees it: the allowed Check's header
    changes applied (Envoy's ratelimit filter reads the headers ext_authz set)."""
    if not upstream and not removed:
        return request
    headers = {name: value for name, value in request.headers.items() if name not in removed}
    headers.update((name.lower(), value) for name, value in upstream)
    return replace(request, headers=headers)
