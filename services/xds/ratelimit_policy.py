"""The ``RateLimitPolicy`` kind (``mixerless.io/v1alpha1``): a quota on a gateway's routes.

```yaml
apiVersion: mixerless.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: product-per-user, namespace: istio-system}
spec:
  targetRef: {kind: Gateway, name: public}
  routes: [products]                 # optional: default every backend route of the gateway
  match: {paths: ["/product", "/product/*"], methods: [GET]}   # optional
  limit: {requests: 100, unit: minute}
  countBy: {subject: {}}             # or {claim: tenant}, {clientAddress: {}}, {header: x-api-key}
  onStoreFailure: deny               # counted inside Check and the store fails: deny (500) or allow
  counting: exact                    # or leased: Redis off the per-request path (leased quota)
```

One policy becomes both halves of Envoy rate limiting, so they cannot disagree:

* route actions (``route_actions``): ``generic_key`` naming the policy, a
  ``header_value_match`` when the policy matches only some requests, and the entry it
  counts by (the verified JWT subject or a claim from the authz service's dynamic
  metadata - never a header the client could forge - the client address, a header);
* the descriptors of the gateway's rate limit domain (``descriptor_config``), in the
  envoyproxy/ratelimit config format the rate limit service already reads.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.policy.errors import ErrorSink
from services.policy.k8s import ObjectMeta, read_spec
from services.policy.re2 import quote_meta, re2_error

if TYPE_CHECKING:  # gateway.py does not import this module; the names are for types only
    from services.xds.gateway import Gateway, Route

KIND = "RateLimitPolicy"
AUTHZ_METADATA = "envoy.filters.http.ext_authz"
ANONYMOUS = "anonymous"  # what an unauthenticated request is counted as
COUNT_BY = ("subject", "claim", "clientAddress", "header")
# envoyproxy/ratelimit's window units; the rate limit service parses the derived
# descriptors again, so a unit it did not know would still be caught there.
UNITS = ("second", "minute", "hour", "day", "week", "month", "year")
STORE_FAILURE_MODES = ("deny", "allow")
COUNTING_MODES = ("exact", "leased")


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    meta: ObjectMeta
    gateway: str
    routes: tuple[str, ...]  # empty: every route
    paths: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]  # (name, exact value or "*" for presence)
    requests: int
    unit: str  # one of UNITS
    count_by: str  # one of COUNT_BY, or "" for one global counter
    count_value: str  # the claim or header name
    shadow_mode: bool
    file: str
    line: int
    # Counted inside Check (one hop): refuse requests when the store cannot count them.
    deny_on_store_failure: bool = True
    leased: bool = False  # counted from leased quota where the store is shared

    @property
    def key(self) -> str:
        return self.meta.key

    def covers(self, route: str) -> bool:
        """Whether this policy counts requests on the gateway's route ``route``."""
        return not self.routes or route in self.routes

    @property
    def descriptor_key(self) -> str:
        """The entry a request is counted by."""
        return {
            "subject": "user",
            "claim": "claim",
            "clientAddress": "client",
            "header": "header",
        }.get(self.count_by, "")

    @property
    def matches_some(self) -> bool:
        return bool(self.paths or self.methods or self.headers)


def counted_in_check(gateway: "Gateway", route: "Route") -> bool:
    """Whether a gateway route's RateLimitPolicies are counted inside its Check (one hop):
    every route that Checks, ``directResponse`` ones included, unless the gateway names a
    rate limit service of its own (``rateLimit.address``), which then counts them through
    Envoy's ratelimit filter, as does every route with ``authz: false``. (The filter
    cannot count a ``directResponse`` route: it has no RouteAction to carry actions.)"""
    return route.authz and gateway.rate_limit.address is None


def path_regex(patterns: tuple[str, ...]) -> str:
    """Istio value syntax (exact, ``x*``, ``*x``) as one RE2 regex on ``:path`` (query allowed)."""
    parts = []
    for pattern in patterns:
        if pattern == "*":
            parts.append("/[^?]*")
        elif pattern.endswith("*"):
            parts.append(quote_meta(pattern[:-1]) + "[^?]*")
        elif pattern.startswith("*"):
            parts.append("[^?]*" + quote_meta(pattern[1:]))
        else:
            parts.append(quote_meta(pattern))
    return "^(?:" + "|".join(parts) + r")(?:\?.*)?$"


def method_regex(methods: tuple[str, ...]) -> str:
    return "^(?:" + "|".join(quote_meta(m) for m in methods) + ")$"


def route_actions(policy: RateLimitPolicy) -> dict[str, Any]:
    """The Envoy ``RateLimit`` (route ``rate_limits`` entry) for this policy, as JSON."""
    actions: list[dict[str, Any]] = [
        {"generic_key": {"descriptor_key": "policy", "descriptor_value": policy.key}}
    ]
    if policy.matches_some:
        headers: list[dict[str, Any]] = []
        if policy.paths:
            regex = path_regex(policy.paths)
            headers.append({"name": ":path", "string_match": {"safe_regex": {"regex": regex}}})
        if policy.methods:
            regex = method_regex(policy.methods)
            headers.append({"name": ":method", "string_match": {"safe_regex": {"regex": regex}}})
        for name, value in policy.headers:
            if value == "*":
                headers.append({"name": name, "present_match": True})
            else:
                headers.append({"name": name, "string_match": {"exact": value}})
        actions.append(
            {
                "header_value_match": {
                    "descriptor_key": "match",
                    "descriptor_value": "yes",
                    "expect_match": True,
                    "headers": headers,
                }
            }
        )
    key = policy.descriptor_key
    if policy.count_by in ("subject", "claim"):
        path = [{"key": "subject"}]
        if policy.count_by == "claim":  # claim_text: the claim as a string (lists joined)
            path = [{"key": "claim_text"}, {"key": policy.count_value}]
        actions.append(
            {
                "metadata": {
                    "descriptor_key": key,
                    "metadata_key": {"key": AUTHZ_METADATA, "path": path},
                    "default_value": ANONYMOUS,
                    "source": "DYNAMIC",
                }
            }
        )
    elif policy.count_by == "clientAddress":
        actions.append({"remote_address": {}})
    elif policy.count_by == "header":
        actions.append(
            {"request_headers": {"header_name": policy.count_value, "descriptor_key": key}}
        )
    return {"actions": actions}


def descriptor_config(policy: RateLimitPolicy) -> dict[str, Any]:
    """The envoyproxy/ratelimit descriptor that counts what ``route_actions`` sends."""
    limit: dict[str, Any] = {
        "rate_limit": {"unit": policy.unit, "requests_per_unit": policy.requests}
    }
    if policy.leased:
        limit["rate_limit"]["counting"] = "leased"
    if policy.shadow_mode:
        limit["shadow_mode"] = True
    key = "remote_address" if policy.count_by == "clientAddress" else policy.descriptor_key
    leaf: dict[str, Any] = {"key": key, **limit} if key else limit
    inner = leaf
    if policy.matches_some:
        inner = (
            {"key": "match", "value": "yes", "descriptors": [leaf]}
            if key
            else {
                "key": "match",
                "value": "yes",
                **limit,
            }
        )
    elif not key:
        return {"key": "policy", "value": policy.key, **limit}
    return {"key": "policy", "value": policy.key, "descriptors": [inner]}


def compile_rate_limit_policy(body: Any, line: int, sink: ErrorSink) -> RateLimitPolicy | None:
    """Validate one RateLimitPolicy document; errors go to ``sink``."""
    errors_before = len(sink.errors)
    top, meta, spec = read_spec(
        body,
        line,
        sink,
        KIND,
        {
            "targetRef",
            "routes",
            "match",
            "limit",
            "countBy",
            "shadowMode",
            "onStoreFailure",
            "counting",
        },
        required="a RateLimitPolicy needs a spec",
    )
    if spec is None:
        return None
    target = spec.child("targetRef", what="targetRef", allowed={"group", "kind", "name"})
    gateway = ""
    if target is None:
        spec.missing("targetRef", "a RateLimitPolicy needs targetRef: {kind: Gateway, name: ...}")
    else:
        if (target.text("kind") or "Gateway") != "Gateway":
            target.error("kind", "targetRef must be a Gateway")
        gateway = target.text("name", required=True)
    routes = spec.strings("routes")
    match = spec.child("match", what="match", allowed={"paths", "methods", "headers"})
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    headers: list[tuple[str, str]] = []
    if match is not None:
        paths = match.strings("paths")
        for path in paths:
            if not path.startswith(("/", "*")):
                match.error("paths", f"'{path}' must start with / (or be *, *suffix)")
        if paths and (problem := re2_error(path_regex(paths))) is not None:
            match.error("paths", f"the paths make a :path regex Envoy refuses: {problem}")
        methods = match.strings("methods")
        for method in methods:
            if not method.isupper():
                match.error("methods", f"method '{method}' must be upper-case")
        for header in match.children("headers", what="header match", allowed={"name", "value"}):
            name = header.text("name", required=True).lower()
            headers.append((name, header.text("value") or "*"))
    limit = spec.child("limit", what="limit", allowed={"requests", "unit"})
    requests, unit = 0, "minute"
    if limit is None:
        spec.missing("limit", "a RateLimitPolicy needs limit: {requests: N, unit: minute}")
    else:
        requests = limit.integer("requests", required=True, minimum=0, maximum=4_294_967_295)
        unit_text = limit.text("unit", required=True)
        if unit_text and unit_text.lower() not in UNITS:
            limit.error("unit", f"unknown unit '{unit_text}' (second, minute, hour, day, ...)")
        elif unit_text:
            unit = unit_text.lower()
    count_by, count_value = "", ""
    count = spec.child("countBy", what="countBy", allowed=set(COUNT_BY))
    if count is not None:
        chosen = [k for k in COUNT_BY if k in count]
        if len(chosen) != 1:
            count.missing("subject", f"countBy takes exactly one of {', '.join(COUNT_BY)}")
        else:
            count_by = chosen[0]
            if count_by in ("claim", "header"):
                count_value = count.text(count_by, required=True)
                if not count_value and count.raw(count_by) == "":
                    count.error(count_by, f"the {count_by} name must not be empty")
                if count_by == "header":
                    count_value = count_value.lower()
    on_failure = spec.text("onStoreFailure", default="deny")
    if on_failure not in STORE_FAILURE_MODES:
        spec.error("onStoreFailure", f"'{on_failure}' must be deny or allow")
    counting = spec.text("counting", default="exact")
    if counting not in COUNTING_MODES:
        spec.error("counting", f"'{counting}' must be exact or leased")
    if len(sink.errors) > errors_before:
        return None
    return RateLimitPolicy(
        meta,
        gateway,
        routes,
        paths,
        methods,
        tuple(headers),
        requests,
        unit,
        count_by,
        count_value,
        spec.flag("shadowMode"),
        sink.file,
        top.line,
        deny_on_store_failure=on_failure == "deny",
        leased=counting == "leased",
    )
