"""Each stage of a Check on its own: it returns either a final Denial or what it adds."""

from dataclasses import dataclass, field

import pytest

from services.authz import stages
from services.authz.answer import Denial, Verdict, answer
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.plan import JwtPlan
from services.authz.jwt.result import NO_RULES, JwtResult
from services.authz.mesh_config import MeshSettings
from services.authz.model import (
    NO_EFFECTS,
    RBAC_DENIED,
    CheckInput,
    DynamicMetadata,
    Effects,
    HttpRequest,
    Peer,
    Reason,
)
from services.authz.plan import WorkloadDefaults, WorkloadPlan
from services.authz.providers.client import AuthzProviderClient, ProviderDecision
from services.authz.providers.config import GrpcProvider, Provider
from services.clock import ManualClock
from tests.conformance.harness import custom, jwt_rule, op, request_authentication, rule
from tests.jwt_issuer import ISSUER, NOW, claims, jwks, tampered, token
from tests.unit.authz.plans import compiled

DEFAULTS = WorkloadDefaults()
EXT = GrpcProvider(name="ext", service="ext.example.com", port=9000)
OTHER = GrpcProvider(name="other", service="other.example.com", port=9000)
MESH = MeshSettings(providers={"ext": EXT, "other": OTHER}, num_trusted_proxies=1)


def request(path: str = "/", method: str = "GET", **headers: str) -> CheckInput:
    http = HttpRequest(method=method, host="API.example.com", path=path, headers=headers)
    return CheckInput(request=http, source=Peer("10.0.0.9", 4000), destination=Peer("", 8080))


def normalized(check: CheckInput) -> stages.Normalized:
    found = stages.normalize(check, MESH)
    assert isinstance(found, stages.Normalized)
    return found


@dataclass
class FakeProviders:
    """Provider clients that answer ``decision`` and record who was asked with what."""

    decision: ProviderDecision
    asked: list[tuple[str, str]] = field(default_factory=list)

    def get(self, provider: Provider) -> AuthzProviderClient:
        return FakeProvider(provider.name, self)

    def seams(self, failed: list[str] | None = None) -> stages.Seams:
        sink = failed if failed is not None else []
        return stages.Seams(JwtAuthenticator(), self, sink.append)


@dataclass
class FakeProvider:
    name: str
    owner: FakeProviders

    async def check(self, check: CheckInput) -> ProviderDecision:
        self.owner.asked.append((self.name, check.request.path))
        return self.owner.decision

    async def close(self) -> None:
        return None


@dataclass
class RecordingAuthenticator:
    """A JWT step that records the requests it saw and answers ``result``."""

    result: JwtResult
    seen: list[HttpRequest] = field(default_factory=list)

    async def authenticate(self, plan: JwtPlan, request: HttpRequest) -> JwtResult:
        self.seen.append(request)
        return self.result


class TestNormalize:
    def test_tcp_check_is_denied(self) -> None:
        """A network (TCP) check is refused with 403, before anything else."""
        denial = stages.normalize(CheckInput(HttpRequest(), http=False), MESH)
        assert isinstance(denial, Denial)
        assert (denial.status, denial.reason.stage) == (403, "tcp")

    def test_lower_case_method_is_400(self) -> None:
        """A method that is not upper-case is a 400, as Envoy refuses it."""
        denial = stages.normalize(request(method="get"), MESH)
        assert isinstance(denial, Denial)
        assert (denial.status, denial.body, denial.reason.stage) == (400, "Bad Request", "method")

    def test_invalid_path_is_400(self) -> None:
        """A path Envoy refuses is a 400 whose reason says why."""
        denial = stages.normalize(request(path="no-slash"), MESH)
        assert isinstance(denial, Denial)
        assert (denial.status, denial.reason.stage) == (400, "path")
        assert denial.reason.detail

    def test_attributes_see_the_normalized_request(self) -> None:
        """The path is normalized (query kept on :path), the host lower-cased, XFF trusted."""
        check = request(path="/a/../b?x=1", **{"x-forwarded-for": "198.51.100.7,10.0.0.9"})
        found = normalized(check)
        assert found.check.request.path == "/b?x=1"
        attributes = found.attributes
        assert (attributes.path, attributes.path_with_query) == ("/b", "/b?x=1")
        assert attributes.host == "api.example.com"
        assert attributes.remote_ip == "198.51.100.7"

    def test_plain_request_is_passed_on_as_is(self) -> None:
        """A request whose path is already normal keeps its CheckInput object."""
        check = request(path="/b?x=1")
        assert normalized(check).check is check


class TestCustom:
    def plan(self, *documents: dict[str, object]) -> WorkloadPlan:
        return compiled(*documents, mesh=MESH).plan({}, DEFAULTS)

    async def test_no_custom_policy_adds_nothing(self) -> None:
        """Without CUSTOM policies no provider is asked and nothing is added."""
        providers = FakeProviders(ProviderDecision(True))
        plan = compiled(mesh=MESH).plan({}, DEFAULTS)
        added = await stages.custom(plan, normalized(request()), MESH.providers, providers.seams())
        assert added is NO_EFFECTS and providers.asked == []

    async def test_allowing_provider_adds_its_changes(self) -> None:
        """An allowing provider's header, query and metadata changes are what the stage adds."""
        decision = ProviderDecision(
            True,
            upstream_headers=(("x-ext", "yes"),),
            upstream_headers_to_remove=("x-drop",),
            downstream_headers=(("x-seen", "1"),),
            query_parameters_to_set=(("q", "1"),),
            query_parameters_to_remove=("secret",),
            dynamic_metadata={"ext": "v"},
        )
        providers = FakeProviders(decision)
        plan = self.plan(custom("ext", rule(to=op(paths=["/a"]))))
        check = normalized(request(path="/x/../a"))
        added = await stages.custom(plan, check, MESH.providers, providers.seams())
        assert isinstance(added, Effects)
        assert added.upstream == (("x-ext", "yes"),)
        assert added.upstream_remove == ("x-drop",)
        assert added.downstream == (("x-seen", "1"),)
        assert (added.query_set, added.query_remove) == ((("q", "1"),), ("secret",))
        assert dict(added.metadata or {}) == {"ext": "v"}
        assert providers.asked == [("ext", "/a")]  # the provider sees the normalized path

    async def test_denying_provider_is_final(self) -> None:
        """A provider's denial is the answer, with its status, body and headers."""
        providers = FakeProviders(ProviderDecision(False, 401, "no", (), (), (("x-why", "n"),)))
        plan = self.plan(custom("ext", rule()))
        denial = await stages.custom(plan, normalized(request()), MESH.providers, providers.seams())
        assert isinstance(denial, Denial)
        assert (denial.status, denial.body, denial.headers) == (401, "no", (("x-why", "n"),))
        assert str(denial.reason) == "custom: policy istio-system/custom-ext, rule 0, ext"

    async def test_provider_error_is_reported(self) -> None:
        """A provider that failed (fail-open) is reported through ``provider_failed``."""
        providers = FakeProviders(ProviderDecision(True, error=True))
        failed: list[str] = []
        plan = self.plan(custom("ext", rule()))
        await stages.custom(plan, normalized(request()), MESH.providers, providers.seams(failed))
        assert failed == ["ext"]

    async def test_unknown_provider_is_403(self) -> None:
        """A CUSTOM rule naming a provider the mesh does not define denies, unasked."""
        providers = FakeProviders(ProviderDecision(True))
        plan = self.plan(custom("missing", rule()))
        denial = await stages.custom(plan, normalized(request()), MESH.providers, providers.seams())
        assert isinstance(denial, Denial)
        assert (denial.status, denial.body) == (403, RBAC_DENIED)
        assert "unknown provider 'missing'" in str(denial.reason)
        assert providers.asked == []

    async def test_several_providers_are_403(self) -> None:
        """A workload with CUSTOM policies for two providers denies when one matches."""
        providers = FakeProviders(ProviderDecision(True))
        plan = self.plan(custom("ext", rule()), custom("other", rule(to=op(paths=["/z"]))))
        denial = await stages.custom(plan, normalized(request()), MESH.providers, providers.seams())
        assert isinstance(denial, Denial)
        assert "more than one CUSTOM provider" in str(denial.reason)


class TestAuthenticate:
    DOCUMENT = request_authentication(
        jwt_rule(
            ISSUER, jwks=jwks("rsa"), outputClaimToHeaders=[{"header": "x-sub", "claim": "sub"}]
        )
    )

    @pytest.fixture(name="authn")
    def fixture_authn(self) -> JwtAuthenticator:
        return JwtAuthenticator(clock=ManualClock(NOW))

    def plan(self) -> WorkloadPlan:
        return compiled(self.DOCUMENT).plan({}, DEFAULTS)

    async def test_no_rules_is_anonymous_without_asking(self) -> None:
        """A workload without JWT rules never reaches the authenticator."""
        authn = RecordingAuthenticator(JwtResult(status="none"))
        found = await stages.authenticate(compiled().plan({}, DEFAULTS), HttpRequest(), authn)
        assert found is NO_RULES and authn.seen == []

    async def test_cors_preflight_skips_jwt(self) -> None:
        """A CORS preflight is not authenticated (Istio's bypass_cors_preflight)."""
        authn = RecordingAuthenticator(JwtResult(status="none"))
        preflight = HttpRequest(
            method="OPTIONS",
            headers={"origin": "https://a.example", "access-control-request-method": "GET"},
        )
        assert await stages.authenticate(self.plan(), preflight, authn) is NO_RULES
        assert authn.seen == []

    async def test_invalid_token_is_final(self, authn: JwtAuthenticator) -> None:
        """A bad token is a 401 Denial carrying Envoy's challenge."""
        bad = HttpRequest(headers={"authorization": f"Bearer {tampered(token(claims()))}"})
        denial = await stages.authenticate(self.plan(), bad, authn)
        assert isinstance(denial, Denial)
        assert (denial.status, denial.body) == (401, "Jwt verification fails")
        assert denial.headers[0][0] == "www-authenticate"
        assert denial.reason == Reason("jwt", detail="Jwt verification fails")

    async def test_valid_token_adds_headers_metadata_and_identity(
        self, authn: JwtAuthenticator
    ) -> None:
        """A good token adds its output headers, removals, metadata, and the identity."""
        good = HttpRequest(headers={"authorization": f"Bearer {token(claims())}"})
        found = await stages.authenticate(self.plan(), good, authn)
        assert isinstance(found, JwtResult)
        assert found.status == "ok" and found.subject == "alice"
        assert found.effects.upstream == (("x-sub", "alice"),)
        assert found.effects.upstream_remove == ("authorization",)
        assert found.effects.metadata is found.metadata
        assert found.effects.metadata is not None
        assert found.effects.metadata["principal"] == f"{ISSUER}/alice"

    async def test_no_token_only_removes_output_headers(self, authn: JwtAuthenticator) -> None:
        """Without a token the request goes on anonymous, minus client-sent output headers."""
        found = await stages.authenticate(self.plan(), HttpRequest(), authn)
        assert isinstance(found, JwtResult)
        assert found.status == "missing"
        assert found.effects == Effects(upstream_remove=("x-sub",))


class TestAnswer:
    def test_denial_carries_only_its_own_headers(self) -> None:
        """A denied Decision has the denial's status, body, headers and reason, no effects."""
        denial = Denial(401, "no", Reason("jwt"), (("www-authenticate", "Bearer"),), ("a",))
        decision = answer(denial, Effects(upstream=(("x", "1"),)))
        assert not decision.allowed
        assert (decision.status, decision.body) == (401, "no")
        assert decision.downstream_headers == (("www-authenticate", "Bearer"),)
        assert decision.upstream_headers == ()
        assert (decision.reason, decision.audit) == (Reason("jwt"), ("a",))

    def test_verdict_carries_the_effects(self) -> None:
        """An allowed Decision carries every accumulated effect and RBAC's notes."""
        metadata = DynamicMetadata({"k": "v"})
        effects = Effects((("x", "1"),), ("y",), (("z", "2"),), (("q", "3"),), ("r",), metadata)
        decision = answer(Verdict(Reason("default"), (), ("dry",)), effects)
        assert decision.allowed
        assert decision.upstream_headers == (("x", "1"),)
        assert decision.upstream_headers_to_remove == ("y",)
        assert decision.downstream_headers == (("z", "2"),)
        assert decision.query_parameters_to_set == (("q", "3"),)
        assert decision.query_parameters_to_remove == ("r",)
        assert decision.dynamic_metadata is metadata
        assert decision.dry_run == ("dry",)


class TestEffects:
    def test_nothing_plus_effects_is_those_effects(self) -> None:
        """Adding to or adding nothing hands on the same object (no copies per request)."""
        effects = Effects(upstream=(("x", "1"),))
        assert NO_EFFECTS.plus(effects) is effects
        assert effects.plus(NO_EFFECTS) is effects

    def test_later_changes_follow_and_later_metadata_wins(self) -> None:
        """Header changes keep stage order; a later stage's metadata keys override."""
        first = Effects(upstream=(("a", "1"),), metadata=DynamicMetadata({"k": "p", "p": 1}))
        later = Effects(upstream=(("b", "2"),), metadata=DynamicMetadata({"k": "jwt"}))
        both = first.plus(later)
        assert both.upstream == (("a", "1"), ("b", "2"))
        assert dict(both.metadata or {}) == {"k": "jwt", "p": 1}
