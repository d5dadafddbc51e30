"""``mixerless explain``: the decision for a described request, and what decided it."""

import textwrap
from pathlib import Path

import pytest

from services.cli import main

MESH = """
apiVersion: mixerless.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  defaultConfig:
    gatewayTopology: {numTrustedProxies: 1}
  extensionProviders:
  - name: ext
    envoyExtAuthzHttp: {service: ext.example.com, port: 8000}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admin-from-office, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/*"]}}]
    from: [{source: {notRemoteIpBlocks: ["203.0.113.0/24"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ask-ext, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules:
  - to: [{operation: {paths: ["/orders/*"]}}]
"""


@pytest.fixture(name="policies")
def fixture_policies(tmp_path: Path) -> Path:
    (tmp_path / "p.yaml").write_text(textwrap.dedent(MESH))
    return tmp_path


class TestExplain:
    def test_names_the_deciding_policy_and_rule(
        self, policies: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A denied request names the DENY policy and rule, after path normalization; exit 1."""
        request = ["--path", "/x/../admin/users?y=1", "--source-ip", "10.0.0.9"]
        code = main(["explain", str(policies), *request, "--xff", "198.51.100.7, 10.0.0.9"])
        out = capsys.readouterr().out
        assert code == 1
        assert "path: /admin/users" in out
        assert "decision: DENY 403 'RBAC: access denied'" in out
        assert "decided by: deny: policy istio-system/admin-from-office, rule 0" in out

    def test_allowed_request(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A request from the trusted client address passes; exit 0 and the reason is shown."""
        request = ["--path", "/admin/users", "--source-ip", "10.0.0.9"]
        code = main(["explain", str(policies), *request, "--xff", "203.0.113.5, 10.0.0.9"])
        out = capsys.readouterr().out
        assert code == 0
        assert "decided by: default: no ALLOW policy applies" in out

    def test_custom_provider_is_named_not_called(
        self, policies: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A CUSTOM match says which provider would be asked, without calling it."""
        assert main(["explain", str(policies), "--path", "/orders/7"]) == 0
        assert "CUSTOM: provider ext would be asked" in capsys.readouterr().out

    def test_invalid_policies_exit_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A policy directory that does not load is reported, exit 2."""
        (tmp_path / "p.yaml").write_text("apiVersion: security.istio.io/v1\nkind: Nope\n")
        assert main(["explain", str(tmp_path)]) == 2
        assert "unsupported document kind 'Nope'" in capsys.readouterr().out

    def test_invalid_path_is_shown_as_the_normalize_stage_refused_it(
        self, policies: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A path Envoy refuses is reported with the stage's reason and the 400; exit 1."""
        assert main(["explain", str(policies), "--path", "no-slash"]) == 1
        out = capsys.readouterr().out
        assert "path: invalid (path must start with '/')" in out
        assert "decision: DENY 400 'Bad Request'" in out
