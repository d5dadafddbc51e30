"""The decision-cache key, against the real pipeline: equal keys mean equal decisions.

Random policy sets (AuthorizationPolicy and RequestAuthentication documents through the
real compilers) and random pairs of requests, the second differing from the first in a
few random attributes. Then, for the plan's ``ReadSet``:

* safety: equal keys ⇒ the uncached decisions (``pipeline.run`` with real JWT
  verification over inline keys) are equal in every field, whenever either of them may
  be cached (a rejected token's answer never is, and names the URL in its realm);
* sensitivity: if any value the plan's checks read differs, the keys differ. What the
  checks read is found independently of ``reads.py``: each compiled ``Check``'s getter is
  run against a recorder that notes every attribute, header and claim it touches; the
  path counts as what the checks reading it answer for it; the JWT step's inputs (CORS
  preflight, extracted tokens) are added;
* precision: equal read values ⇒ equal keys, so nothing unread is in the key.
"""

from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from services.authz import pipeline, stages
from services.authz.attributes import Attributes
from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.keys import KeyResolver
from services.authz.jwt.result import NO_RULES
from services.authz.mesh_config import MeshSettings
from services.authz.model import CheckInput, Decision, HttpRequest, Peer
from services.authz.paths import PathNormalization
from services.authz.plan import WorkloadDefaults, WorkloadPlan
from services.authz.providers.client import AuthzProviderClient
from services.authz.providers.config import Provider
from services.authz.reads import ReadSet, compile_reads, ttl_cap
from services.clock import ManualClock
from tests.conformance.harness import (
    authorization_policy,
    cond,
    jwt_rule,
    op,
    request_authentication,
    rule,
    src,
)
from tests.jwt_issuer import ISSUER, NOW, claims, jwks, tampered, token
from tests.unit.authz.plans import compiled

DEFAULTS = WorkloadDefaults()
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis directory in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)

# --- tokens: signed once -----------------------------------------------------------------

ALICE = token(claims())
BOB = token(claims(sub="bob", groups=["admin", "dev"], azp="web"))
EXPIRED = token(claims(exp=int(NOW) - 3600))
STRANGER = token(claims(iss="https://other.example.com"))
TOKENS = [ALICE, BOB, EXPIRED, tampered(ALICE), STRANGER, token(claims(), key="ec256"), "abc"]

# --- policies ------------------------------------------------------------------------------

SOURCE_VALUES = {
    "principals": ["cluster.local/ns/a/sa/b", "*"],
    "namespaces": ["a", "b"],
    "requestPrincipals": [f"{ISSUER}/alice", "*", f"{ISSUER}/*"],
    "ipBlocks": ["10.0.0.0/8", "192.0.2.10"],
    "remoteIpBlocks": ["203.0.113.0/24", "10.0.0.9"],
}
OPERATION_VALUES = {
    "hosts": ["api.example.com", "*.example.com", "api.example.com:8080"],
    "ports": ["8080", "9090"],
    "methods": ["GET", "OPTIONS", "POST"],
    "paths": ["/a", "/a/*", "/b*", "/"],
}
CONDITION_VALUES = {
    "request.headers[x-team]": ["blue", "red"],
    "request.headers[X-Env]": ["prod", "*"],
    "request.headers[:path]": ["/b?x=1", "/a", "/a*"],
    "request.headers[:authority]": ["api.example.com"],
    "request.headers[:method]": ["POST", "OPTIONS"],
    "request.headers[authorization]": ["Basic*", "*"],
    "request.headers[cookie]": ["*"],
    "source.ip": ["10.0.0.9"],
    "remote.ip": ["203.0.113.1", "198.51.100.0/24"],
    "source.principal": ["cluster.local/ns/a/sa/b"],
    "source.namespace": ["a"],
    "request.auth.principal": [f"{ISSUER}/alice"],
    "request.auth.claims[groups]": ["admin"],
    "request.auth.audiences": ["api.example.com"],
    "request.auth.presenter": ["web"],
    "destination.ip": ["10.1.0.5"],
    "destination.port": ["9090"],
    "connection.sni": ["api.example.com"],
}


def _negatable(field: str) -> st.SearchStrategy[str]:
    return st.sampled_from([field, "not" + field[0].upper() + field[1:]])


@st.composite
def _fields(draw: st.DrawFn, table: Mapping[str, list[str]]) -> dict[str, list[str]]:
    names = draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=2, unique=True))
    return {
        draw(_negatable(name)): draw(st.lists(st.sampled_from(table[name]), min_size=1, max_size=2))
        for name in names
    }


@st.composite
def _condition(draw: st.DrawFn) -> dict[str, Any]:
    # Header keys half the time: they have the subtlest reads (pseudo-headers, repeats).
    headers = sorted(k for k in CONDITION_VALUES if k.startswith("request.headers["))
    others = sorted(k for k in CONDITION_VALUES if k not in headers)
    key = draw(st.sampled_from(headers) | st.sampled_from(others))
    values = draw(st.lists(st.sampled_from(CONDITION_VALUES[key]), min_size=1, max_size=2))
    if draw(st.booleans()):
        return cond(key, values)
    return cond(key, not_values=values)


@st.composite
def _rule(draw: st.DrawFn) -> dict[str, Any]:
    sources = draw(st.none() | _fields(SOURCE_VALUES).map(lambda f: src(**f)))
    operations = draw(st.none() | _fields(OPERATION_VALUES).map(lambda f: op(**f)))
    conditions = draw(st.none() | st.lists(_condition(), min_size=1, max_size=2))
    return rule(from_=sources, to=operations, when=conditions)


@st.composite
def _policy(draw: st.DrawFn, name: str) -> dict[str, Any]:
    action = draw(st.sampled_from(["ALLOW", "DENY", "AUDIT"]))
    rules = draw(st.lists(_rule(), min_size=1, max_size=2))
    dry_run = draw(st.sampled_from([None, None, "true"]))
    return authorization_policy(action, *rules, name=name, dry_run=dry_run)


JWT_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "audiences": st.sampled_from([["api.example.com"], ["other.example.com"]]),
    "fromHeaders": st.sampled_from(
        [[{"name": "x-jwt"}], [{"name": "authorization", "prefix": "Bearer "}]]
    ),
    "fromParams": st.just(["token"]),
    "fromCookies": st.just(["session"]),
    "outputClaimToHeaders": st.just([{"header": "x-user", "claim": "sub"}]),
    "outputPayloadToHeader": st.just("x-payload"),
    "forwardOriginalToken": st.just(True),
}


@st.composite
def _authentication(draw: st.DrawFn) -> dict[str, Any]:
    options = draw(st.fixed_dictionaries({}, optional=JWT_OPTIONS))
    return request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"), **options))


@st.composite
def _documents(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=0, max_value=2))  # few: one read can hide another
    documents = [draw(_policy(f"p{index}")) for index in range(count)]
    if draw(st.integers(min_value=0, max_value=2)):  # two in three sets verify tokens
        documents.append(draw(_authentication()))
    return documents


MESHES = st.builds(
    MeshSettings,
    path_normalization=st.sampled_from(list(PathNormalization)),
    num_trusted_proxies=st.integers(min_value=0, max_value=2),
)

# --- requests --------------------------------------------------------------------------------

# Every value a request field can take: small pools, so requests often agree.
REQUEST_VALUES: dict[str, list[Any]] = {
    "http": [True, False],
    "method": ["GET", "POST", "OPTIONS", "get"],
    "host": ["api.example.com", "API.example.com", "other.example.com"],
    "scheme": ["http", "https"],
    "path": [
        *["/", "/a", "/a/", "/a/b", "/x/../a", "//a", "/b?x=1", "/b?x=2", "/A", "/a?x=1"],
        *["/a#f", "/a%2Fb", "/a/./b", "/b?x=1#f", "/./", "/x/..", "/%61", "/a/%2e/b"],
        *["no-slash", "/a%00", "/a b"],  # refused by normalize
        *[f"/a?{name}={t}" for name in ("access_token", "token") for t in TOKENS],
        f"/a#f?access_token={ALICE}",  # after a fragment: not a query at all
    ],
    "authorization": [None, "Basic abc", *[f"Bearer {t}" for t in TOKENS]],
    "x-jwt": [None, *TOKENS],
    "cookie": [None, "other=1", *[f"session={t}" for t in TOKENS], f"a=1; session={ALICE}"],
    "origin": [None, "https://app.example"],
    "access-control-request-method": [None, "GET"],
    # a tuple is a header sent more than once; "blue,red" is one value with a comma in it
    "x-team": [None, "blue", "red", "blue,red", ("blue", "red"), ("red", "red")],
    "x-env": [None, "prod", "dev", ""],
    "x-forwarded-for": [
        *[None, "203.0.113.1", "203.0.113.1,10.0.0.9"],
        *["198.51.100.2, 10.0.0.9", "junk,10.0.0.9"],
    ],
    "peer": ["10.0.0.9", "192.0.2.10"],
    "principal": ["", "spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/b/sa/c"],
    "destination": ["10.1.0.5", "10.1.0.6"],
    "port": [8080, 9090],
    "sni": ["", "api.example.com", "other.example.com"],
    "context": [(), (("namespace", "istio-system"),)],
}
# The first request: mostly one the stages accept, so it gets a key.
FIRST_VALUES: dict[str, st.SearchStrategy[Any]] = {
    name: st.sampled_from(values) for name, values in REQUEST_VALUES.items()
}
FIRST_VALUES["http"] = st.just(True)
FIRST_VALUES["method"] = st.sampled_from(["GET", "POST", "OPTIONS"])
FIRST_VALUES["path"] = st.sampled_from(
    [p for p in REQUEST_VALUES["path"] if p not in ("no-slash", "/a%00", "/a b")]
)
HEADERS = (
    "authorization",
    "x-jwt",
    "cookie",
    "origin",
    "access-control-request-method",
    "x-team",
    "x-env",
    "x-forwarded-for",
)


def build(fields: Mapping[str, Any]) -> CheckInput:
    """A CheckInput as the servicer makes one: repeated headers also joined with ``,``."""
    headers: dict[str, str] = {}
    repeated: dict[str, tuple[str, ...]] = {}
    for name in HEADERS:
        value = fields[name]
        if isinstance(value, tuple):
            repeated[name] = value
            value = ",".join(value)
        if value is not None:
            headers[name] = value
    request = HttpRequest(
        method=fields["method"],
        host=fields["host"],
        path=fields["path"],
        scheme=fields["scheme"],
        headers=headers,
        repeated=repeated,
    )
    return CheckInput(
        request=request,
        source=Peer(fields["peer"], 40000, fields["principal"]),
        destination=Peer(fields["destination"], fields["port"]),
        sni=fields["sni"],
        context=dict(fields["context"]),
        http=fields["http"],
    )


@st.composite
def variants(draw: st.DrawFn, first: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every copy of ``first`` with one field set to another value of its pool (so each
    attribute and each tricky value gets its turn, whatever hypothesis favours), and one
    copy with two or three fields changed at once."""
    found = [
        {**first, name: value}
        for name, values in REQUEST_VALUES.items()
        for value in values
        if value != first[name]
    ]
    several = dict(first)
    for name in draw(st.sets(st.sampled_from(sorted(REQUEST_VALUES)), min_size=2, max_size=3)):
        several[name] = draw(st.sampled_from([v for v in REQUEST_VALUES[name] if v != first[name]]))
    return [*found, several]


@dataclass
class Scenario:
    """One policy set, a request, and variants of it to compare it with."""

    config: AuthzConfig
    first: CheckInput
    others: list[CheckInput]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    config = compiled(*draw(_documents()), mesh=draw(MESHES))
    first = draw(st.fixed_dictionaries(FIRST_VALUES))
    return Scenario(config, build(first), [build(other) for other in draw(variants(first))])


# --- the uncached decision ---------------------------------------------------------------------


class NoProviders:
    """No CUSTOM policy is enforced in these scenarios: nothing may ask a provider."""

    def get(self, provider: Provider) -> AuthzProviderClient:
        raise AssertionError(f"provider {provider.name} asked")


SEAMS = stages.Seams(
    JwtAuthenticator(KeyResolver(), ManualClock(NOW)), NoProviders(), lambda name: None
)


def finish(coroutine: Coroutine[Any, Any, Decision]) -> Decision:
    """Run a pipeline that never waits (inline keys, no providers) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: Decision = done.value
        return result
    coroutine.close()
    raise AssertionError("the pipeline waited")


def decide(config: AuthzConfig, check: CheckInput) -> tuple[Decision, pipeline.Trace]:
    plan = config.plan(check.context, DEFAULTS)
    trace = pipeline.Trace()
    return finish(pipeline.run(config.mesh, plan, check, SEAMS, trace)), trace


def cacheable(trace: pipeline.Trace) -> bool:
    """Whether the service may keep this outcome: what its ``ttl_cap`` says."""
    return ttl_cap(trace.jwt or NO_RULES, NOW) is not None


def reads_for(config: AuthzConfig, check: CheckInput) -> ReadSet:
    return compile_reads(config.plan(check.context, DEFAULTS), config.mesh)


# --- what the checks read, found by running their getters ----------------------------------


class Recorder:
    """Stands in for ``Attributes``: notes every field, header and claim a getter reads."""

    def __init__(self) -> None:
        self.reads: set[tuple[str, Any]] = set()

    def __getattr__(self, name: str) -> Any:
        self.reads.add(("field", name))
        return "recorded"  # truthy and not None: getters read on as for a present value

    def header(self, name: str) -> None:
        self.reads.add(("header", name))

    def claim(self, path: tuple[str, ...]) -> None:
        self.reads.add(("claim", path))


def plan_checks(plan: WorkloadPlan) -> list[Any]:
    """Every compiled ``Check`` of the policies RBAC evaluates for ``plan``."""
    checks: list[Any] = []
    for policy in (*plan.audit, *plan.deny, *plan.allow, *plan.dry_run):
        for compiled_rule in policy.rules:
            checks.extend(compiled_rule.conditions)
            for entries in (compiled_rule.sources or (), compiled_rule.operations or ()):
                for entry in entries:
                    checks.extend(entry)
    return checks


def recorded_reads(plan: WorkloadPlan) -> tuple[list[tuple[str, Any]], list[Any]]:
    """What the checks read, and the matchers of those that read the path."""
    recorder = Recorder()
    path_matchers: list[Any] = []
    for check in plan_checks(plan):
        own = Recorder()
        check.get(own)
        recorder.reads |= own.reads
        if ("field", "path") in own.reads:
            path_matchers.extend(m for m in (check.positive, check.negative) if m is not None)
    return sorted(recorder.reads, key=repr), path_matchers


def read_values(config: AuthzConfig, check: CheckInput) -> list[Any] | None:
    """Every value the stages up to RBAC read from ``check``, found without reads.py;
    None when normalize refuses the request."""
    plan = config.plan(check.context, DEFAULTS)
    normalized = stages.normalize(check, config.mesh)
    if not isinstance(normalized, stages.Normalized):
        return None
    _, trace = decide(config, check)
    assert isinstance(trace.normalized, stages.Normalized)
    attributes: Attributes = trace.normalized.attributes  # with the verified identity
    context = check.context
    values: list[Any] = [
        plan,
        context.get("namespace", ""),
        context.get("labels"),
        context.get("gateway", ""),
    ]
    reads, path_matchers = recorded_reads(plan)
    for kind, name in reads:
        if kind == "field" and name == "path":  # what the checks reading it make of it
            values.append(tuple(m.matches(attributes.path) for m in path_matchers))
        elif kind == "field":
            values.append(getattr(attributes, name))
        elif kind == "header":
            values.append(attributes.header(name))
        else:
            values.append(attributes.claim(name))
    if plan.jwt_rules:
        request = normalized.check.request
        headers = request.headers
        values.append(
            request.method == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        )
        values.append(plan.jwt.extractor.extract(request))
    return values


# --- the properties ----------------------------------------------------------------------------


def keyed(scenario: Scenario) -> tuple[object, list[tuple[CheckInput, object]]]:
    """The first request's key, and each variant with its key (None: not cacheable)."""
    config = scenario.config
    return reads_for(config, scenario.first).key(scenario.first), [
        (other, reads_for(config, other).key(other)) for other in scenario.others
    ]


@SETTINGS
@given(scenarios())
def test_equal_keys_mean_equal_decisions(scenario: Scenario) -> None:
    """A cached decision is only ever served where the uncached one would be the same."""
    key, others = keyed(scenario)
    assume(key is not None)
    decision, trace = decide(scenario.config, scenario.first)
    for other, other_key in others:
        if other_key == key:
            other_decision, other_trace = decide(scenario.config, other)
            if not (cacheable(trace) or cacheable(other_trace)):
                event("equal keys: neither may be cached")
                continue
            event(f"equal keys: {'allowed' if decision.allowed else decision.status}")
            event(f"equal keys: stage {decision.reason.stage}")
            assert other_decision == decision, other


@SETTINGS
@given(scenarios())
def test_a_read_value_that_differs_changes_the_key(scenario: Scenario) -> None:
    """If anything a policy or the JWT step reads differs, so do the keys."""
    key, others = keyed(scenario)
    assume(key is not None)
    values = read_values(scenario.config, scenario.first)
    for other, other_key in others:
        if other_key is not None and read_values(scenario.config, other) != values:
            event("read values differ")
            assert other_key != key, other


@SETTINGS
@given(scenarios())
def test_nothing_unread_is_in_the_key(scenario: Scenario) -> None:
    """Requests that agree on everything read share a key (the cache is not needlessly cold)."""
    key, others = keyed(scenario)
    assume(key is not None)
    values = read_values(scenario.config, scenario.first)
    for other, other_key in others:
        if other_key is not None and read_values(scenario.config, other) == values:
            event("read values equal")
            assert other_key == key, other
