"""AuthzService edge cases that the gRPC conformance suite does not reach."""

from services import envoy_api as api
from services.authz.config import AuthzConfig
from services.authz.jwt.authenticate import JwtAuthenticator
from services.authz.mesh_config import MeshSettings
from services.authz.providers.registry import ProviderClients
from services.authz.service import AuthzService, WorkloadDefaults
from services.authz.servicer import check_input
from services.metrics import Metrics


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
