"""AuthzService edge cases that the gRPC conformance suite does not reach."""

from services import envoy_api as api
from services.authz.answer import Denial, Verdict
from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.jwt.result import JwtResult
from services.authz.mesh_config import MeshSettings
from services.authz.model import NO_EFFECTS, CheckInput, HttpRequest
from services.authz.pipeline import Trace
from services.authz.providers.config import GrpcProvider
from services.authz.providers.registry import ProviderClients
from services.authz.service import AuthzService, WorkloadDefaults
from services.authz.servicer import check_input, response_for
from services.authz.stages import Normalized
from services.clock import ManualClock
from services.metrics import Metrics
from tests.conformance.harness import custom, jwt_rule, request_authentication, rule
from tests.jwt_issuer import ISSUER, NOW, claims, jwks, tampered, token
from tests.unit.authz.plans import compiled


def make_service(config: AuthzConfig | None) -> AuthzService:
    return AuthzService(
        lambda: config, JwtAuthenticator(), ProviderClients(), Metrics(), WorkloadDefaults()
    )


class TestAuthzService:
    async def test_tcp_check_is_denied(self) -> None:
        """A CheckRequest without an HTTP request (network ext_authz) is denied: fail closed."""
        request = api.CheckRequest()
        request.attributes.source.address.socket_address.address = "10.0.0.1"
        decision = await make_service(AuthzConfig(MeshSettings())).check(check_input(request))
        assert not decision.allowed
        assert decision.reason.stage == "tcp"

    async def test_no_policy_loaded_is_503(self) -> None:
        """Before any policy set loads, every request is denied with 503, never allowed."""
        request = api.CheckRequest()
        request.attributes.request.http.path = "/"
        decision = await make_service(None).check(check_input(request))
        assert (decision.allowed, decision.status) == (False, 503)


DOCUMENT = request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa")))


def jwt_service(config: AuthzConfig) -> AuthzService:
    authn = JwtAuthenticator(clock=ManualClock(NOW))
    return AuthzService(lambda: config, authn, ProviderClients(), Metrics(), WorkloadDefaults())


def with_token(jwt: str) -> CheckInput:
    return CheckInput(
        HttpRequest(host="api.example.com", headers={"authorization": f"Bearer {jwt}"})
    )


class TestDynamicMetadata:
    async def test_same_token_reuses_the_encoded_metadata(self) -> None:
        """Requests with the same token share one metadata object, encoded once (same bytes)."""
        service = jwt_service(compiled(DOCUMENT))
        jwt = token(claims())
        first = await service.check(with_token(jwt))
        first_response = response_for(first)
        second = await service.check(with_token(jwt))
        assert second.dynamic_metadata is not None
        assert second.dynamic_metadata is first.dynamic_metadata
        encodings: list[object] = []

        def encode(values: object) -> bytes:
            encodings.append(values)
            return b""

        encoded = second.dynamic_metadata.encoded(encode)
        assert encodings == []  # encoded by the first response, kept on the object
        second_response = response_for(second)
        assert second.dynamic_metadata.encoded(encode) is encoded
        assert second_response.SerializeToString() == first_response.SerializeToString()
        fields = second_response.dynamic_metadata.fields
        assert fields["principal"].string_value == f"{ISSUER}/alice"

    async def test_no_token_no_metadata(self) -> None:
        """An anonymous request sets no dynamic metadata at all."""
        service = jwt_service(compiled(DOCUMENT))
        decision = await service.check(CheckInput(HttpRequest()))
        assert decision.dynamic_metadata is None
        assert not response_for(decision).HasField("dynamic_metadata")


class TestTrace:
    async def test_trace_records_every_stage(self) -> None:
        """A traced Check records the workload's plan and what each stage returned."""
        config = compiled(DOCUMENT)
        service = jwt_service(config)
        trace = Trace()
        decision = await service.check(with_token(token(claims())), trace)
        assert decision.allowed
        assert trace.plan is config.plan({}, WorkloadDefaults())
        assert isinstance(trace.normalized, Normalized)
        assert trace.custom is NO_EFFECTS
        assert isinstance(trace.jwt, JwtResult) and trace.jwt.status == "ok"
        assert isinstance(trace.rbac, Verdict)

    async def test_trace_stops_at_the_denying_stage(self) -> None:
        """Stages after a denial are not reached, and the trace says so."""
        service = jwt_service(compiled(DOCUMENT))
        trace = Trace()
        decision = await service.check(with_token(tampered(token(claims()))), trace)
        assert decision.status == 401
        assert isinstance(trace.jwt, Denial)
        assert trace.rbac is None


class TestProviderErrors:
    async def test_provider_errors_are_counted(self) -> None:
        """A provider that fails (here: unreachable, fail-open) counts as a backend error."""
        provider = GrpcProvider(
            name="ext", service="127.0.0.1", port=1, timeout=0.5, fail_open=True
        )
        config = compiled(custom("ext", rule()), mesh=MeshSettings(providers={"ext": provider}))
        metrics = Metrics()
        providers = ProviderClients()
        service = AuthzService(
            lambda: config, JwtAuthenticator(), providers, metrics, WorkloadDefaults()
        )
        try:
            decision = await service.check(CheckInput(HttpRequest()))
        finally:
            await providers.close()
        assert decision.allowed  # fail-open
        errors = metrics.registry.get_sample_value(
            "mixerless_backend_errors_total", {"backend": "provider:ext"}
        )
        assert errors == 1
