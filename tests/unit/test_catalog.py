"""The catalog: documents reach their service's kind through one table; services link in order."""

import shutil
from pathlib import Path

import pytest

from services.authz import kinds as authz_kinds
from services.catalog import loader
from services.catalog.loader import LoadOptions, load_directory
from services.policy.errors import PolicyLoadError
from services.ratelimit import kinds as ratelimit_kinds
from services.xds import kinds as xds_kinds
from services.xds.build import Services
from services.xds.gateway import Endpoint
from services.xds.gateway_config import snapshot
from services.xds.snapshot import LISTENER

ROOT = Path(__file__).parent.parent.parent
MESH = """\
apiVersion: mixerless.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}
  defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}
"""


def errors_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load_directory(directory, LoadOptions())
    return [str(e).replace(f"{directory}/", "") for e in info.value.errors]


class TestTable:
    def test_every_service_kind_is_in_the_table_once(self) -> None:
        """Each apiVersion/kind a service reads dispatches to that service's kind, and no
        pair is claimed by two kinds."""
        kinds = (*authz_kinds.KINDS, *ratelimit_kinds.KINDS, *xds_kinds.KINDS)
        pairs = [pair for kind in kinds for pair in kind.reads]
        assert len(pairs) == len(set(pairs))
        assert kinds == loader.KINDS
        for kind in kinds:
            for pair in kind.reads:
                assert loader._BY_API_KIND[pair] is kind

    def test_unknown_kind_names_what_is_read(self, tmp_path: Path) -> None:
        """A kind no service reads is an error at its line listing every kind that is read."""
        (tmp_path / "x.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
        [error] = errors_of(tmp_path)
        assert error.startswith("x.yaml:1: kind: unsupported document kind 'Secret'")
        for kind in ("AuthorizationPolicy", "Gateway", "MeshConfig", "RateLimitPolicy"):
            assert kind in error

    def test_duplicate_names_per_kind(self, tmp_path: Path) -> None:
        """Two documents of one kind may not share a name; different kinds may."""
        policy = (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: same, namespace: ns}\nspec: {action: DENY, rules: [{}]}\n"
        )
        authn = (
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
            "metadata: {name: same, namespace: ns}\nspec: {}\n"
        )
        (tmp_path / "a.yaml").write_text(policy + "---\n" + authn)
        (tmp_path / "b.yaml").write_text(policy)
        assert errors_of(tmp_path) == [
            "b.yaml:1: metadata.name: duplicate AuthorizationPolicy ns/same (first at a.yaml:1)"
        ]


class TestLinking:
    def test_mesh_settings_reach_the_gateway_listeners(self, tmp_path: Path) -> None:
        """meshConfig, an authz document, shapes the gateway's HTTP connection manager."""
        shutil.copytree(ROOT / "policies" / "gateway", tmp_path / "gateway")
        (tmp_path / "mesh.yaml").write_text(MESH)
        [gateway] = load_directory(tmp_path, LoadOptions()).xds.gateways
        [listener] = gateway.resources[LISTENER].values()
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["xff_num_trusted_hops"] == 2
        assert (hcm["normalize_path"], hcm["merge_slashes"]) == (True, True)
        assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_FORWARD"

    def test_what_loads_is_what_is_published(self) -> None:
        """A gateway's resources are compiled once, at load: the snapshot published holds
        the very messages the load built, plus mixerless's own two clusters."""
        [gateway] = load_directory(ROOT / "policies", LoadOptions()).xds.gateways
        services = Services(Endpoint("10.0.0.7", 9001), Endpoint("10.0.0.7", 8081))
        published = snapshot(gateway, services)
        for type_url, messages in gateway.messages.items():
            for name, message in messages.items():
                assert published.resources[type_url][name] is message
        extra = {
            name
            for type_url, messages in published.resources.items()
            for name in messages
            if name not in gateway.messages[type_url]
        }
        assert extra == {"mixerless_authz", "mixerless_ratelimit"}

    def test_rate_limit_policies_become_the_gateways_domain(self) -> None:
        """A RateLimitPolicy's descriptors are served by the rate limit service under the
        gateway's domain, from the same load."""
        policy_set = load_directory(ROOT / "policies", LoadOptions())
        [gateway] = policy_set.xds.gateways
        assert gateway.policies
        assert gateway.gateway.domain in policy_set.ratelimit.domains

    def test_a_gateway_that_cannot_be_built_rejects_the_set(self, tmp_path: Path) -> None:
        """A regex in a hand-written rateLimits entry that Envoy's RE2 refuses is found when
        the gateway is compiled, and rejects the set at the Gateway's line."""
        shutil.copytree(ROOT / "policies" / "gateway", tmp_path / "gateway")
        gateway = tmp_path / "gateway" / "public.yaml"
        text = gateway.read_text()
        match = "{name: x-env, string_match: {safe_regex: {regex: 'a\\Z'}}}"
        action = f"{{header_value_match: {{descriptor_value: v, headers: [{match}]}}}}"
        bad = f"    rateLimits: [{{actions: [{action}]}}]\n    backend:"
        gateway.write_text(text.replace("    backend:", bad, 1))
        [error] = errors_of(tmp_path)
        assert error.startswith("gateway/public.yaml:")
        assert ": spec: Envoy configuration cannot be built: invalid regex 'a\\Z'" in error
