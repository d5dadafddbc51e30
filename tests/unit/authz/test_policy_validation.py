"""Istio-invalid AuthorizationPolicy / RequestAuthentication / MeshConfig documents are
rejected at load, each with file, line, field and reason (as Istio's validation does)."""

import textwrap
from pathlib import Path

import pytest

from services.authz.authorization_policy import Action
from services.authz.workloads import Workload
from services.catalog.loader import LoadOptions, load_directory
from services.policy.errors import PolicyLoadError


def load(tmp_path: Path, text: str) -> object:
    (tmp_path / "p.yaml").write_text(textwrap.dedent(text).lstrip())
    return load_directory(tmp_path, LoadOptions())


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load(tmp_path, text)
    return [str(e).split("/p.yaml:", 1)[1] for e in info.value.errors]


POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: istio-system
spec:
"""

INVALID = {
    "deny without rules": (
        POLICY + "  action: DENY\n",
        "7: spec.rules: a DENY policy must have at least one rule",
    ),
    "custom without rules": (
        POLICY + "  action: CUSTOM\n  provider: {name: ext}\n",
        "7: spec.rules: a CUSTOM policy must have at least one rule",
    ),
    "custom without provider": (
        POLICY + "  action: CUSTOM\n  rules: [{}]\n",
        "7: spec.provider: a CUSTOM policy must name its provider",
    ),
    "provider on allow": (
        POLICY + "  provider: {name: ext}\n  rules: [{}]\n",
        "7: spec.provider: provider can only be set with action CUSTOM",
    ),
    "unknown action": (POLICY + "  action: PERMIT\n", "7: spec.action: unknown action 'PERMIT'"),
    "custom with principals": (
        POLICY
        + "  action: CUSTOM\n  provider: {name: ext}\n  rules:\n"
        + "  - from:\n    - source:\n        principals: [a]\n",
        "12: spec.rules[0].from[0].source.principals: principals cannot be used in a CUSTOM policy",
    ),
    "custom with request principals": (
        POLICY
        + "  action: CUSTOM\n  provider: {name: ext}\n  rules:\n"
        + "  - from:\n    - source:\n        notRequestPrincipals: ['*']\n",
        "notRequestPrincipals cannot be used in a CUSTOM policy",
    ),
    "custom with jwt condition": (
        POLICY
        + "  action: CUSTOM\n  provider: {name: ext}\n  rules:\n"
        + "  - when:\n    - key: request.auth.claims[group]\n      values: [a]\n",
        "11: spec.rules[0].when[0].key: 'request.auth.claims[group]' cannot be used in a CUSTOM",
    ),
    "bad cidr": (
        POLICY + "  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/33]\n",
        "10: spec.rules[0].from[0].source.ipBlocks:",
    ),
    "unknown when key": (
        POLICY + "  rules:\n  - when:\n    - key: request.colour\n      values: [red]\n",
        "9: spec.rules[0].when[0].key: unknown condition key 'request.colour'",
    ),
    "removed when key": (
        POLICY + "  rules:\n  - when:\n    - key: destination.labels[app]\n      values: [a]\n",
        "9: spec.rules[0].when[0].key: 'destination.labels[app]' was removed from Istio",
    ),
    "malformed bracket key": (
        POLICY + "  rules:\n  - when:\n    - key: request.headers[x-a\n      values: [a]\n",
        "9: spec.rules[0].when[0].key: malformed key 'request.headers[x-a'",
    ),
    "when without values": (
        POLICY + "  rules:\n  - when:\n    - key: request.headers[x-a]\n",
        "spec.rules[0].when[0].values: a condition needs values or notValues",
    ),
    "bad port": (
        POLICY + "  rules:\n  - to:\n    - operation:\n        ports: ['http']\n",
        "10: spec.rules[0].to[0].operation.ports:",
    ),
    "empty from": (POLICY + "  rules:\n  - from: []\n", "8: spec.rules[0].from: must not be empty"),
    "empty to": (POLICY + "  rules:\n  - to: []\n", "8: spec.rules[0].to: must not be empty"),
    "empty source": (
        POLICY + "  rules:\n  - from:\n    - source: {}\n",
        "spec.rules[0].from[0].source: source must not be empty",
    ),
    "empty string value": (
        POLICY + "  rules:\n  - to:\n    - operation:\n        paths: ['']\n",
        "spec.rules[0].to[0].operation.paths: values must not be empty strings",
    ),
    "null value list": (
        POLICY + "  rules:\n  - to:\n    - operation:\n        paths:\n",
        "spec.rules[0].to[0].operation.paths: must not be null",
    ),
    "invalid template": (
        POLICY + "  rules:\n  - to:\n    - operation:\n        paths: ['/a/{**}/{*}']\n",
        "10: spec.rules[0].to[0].operation.paths:",
    ),
    "service accounts with principals": (
        POLICY
        + "  rules:\n  - from:\n    - source:\n"
        + "        serviceAccounts: [ns/sa]\n        principals: [x]\n",
        "serviceAccounts cannot be combined with principals or namespaces",
    ),
    "selector and targetRefs": (
        POLICY
        + "  selector: {matchLabels: {app: gw}}\n"
        + "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n",
        "spec.selector: only one of selector or targetRefs can be set",
    ),
    "cross-namespace targetRef": (
        POLICY
        + "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw, namespace: other}]\n",  # noqa: E501
        "spec.targetRefs[0].namespace: cross-namespace targetRef is not allowed",
    ),
    "unknown field": (
        POLICY + "  rules:\n  - to:\n    - operation:\n        path: [/a]\n",
        "10: spec.rules[0].to[0].operation.path: unknown key 'path' in operation",
    ),
    "bad dry-run annotation": (
        POLICY.replace(
            "  namespace: istio-system\n",
            "  namespace: istio-system\n  annotations:\n    istio.io/dry-run: 'yes'\n",
        )
        + "  rules: [{}]\n",
        "annotation istio.io/dry-run must be true or false, got 'yes'",
    ),
    "jwt rule without issuer": (
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: r, namespace: istio-system}
        spec:
          jwtRules:
          - jwksUri: https://example.com/jwks
        """,
        "spec.jwtRules[0].issuer: jwtRule is missing 'issuer'",
    ),
    "jwks uri not http": (
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: r, namespace: istio-system}
        spec:
          jwtRules:
          - issuer: a
            jwksUri: file:///etc/passwd
        """,
        "spec.jwtRules[0].jwksUri: 'file:///etc/passwd' must be an http or https URL",
    ),
    "inline jwks without a usable key": (
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: r, namespace: istio-system}
        spec:
          jwtRules:
          - issuer: a
            jwks: '{"keys": [{"kty": "RSA", "n": "AQAB"}]}'
        """,
        "7: spec.jwtRules[0].jwks: has no usable public key",
    ),
    "jwt timeout not a protobuf duration": (
        """
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: r, namespace: istio-system}
        spec:
          jwtRules:
          - issuer: a
            jwksUri: https://example.com/jwks
            timeout: 500ms
        """,
        "spec.jwtRules[0].timeout: must be a protobuf Duration string in seconds",
    ),
    "missing apiVersion": (
        "kind: AuthorizationPolicy\nmetadata: {name: x}\n",
        "1: apiVersion: document has no apiVersion",
    ),
    "unknown kind": (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n",
        "1: kind: unsupported document kind 'PeerAuthentication'",
    ),
    "bad normalization": (
        """
        apiVersion: mixerless.io/v1alpha1
        kind: MeshConfig
        metadata: {name: mesh}
        spec:
          pathNormalization: {normalization: TIDY}
        """,
        "spec.pathNormalization.normalization: unknown normalization 'TIDY'",
    ),
}


class TestInvalidDocuments:
    @pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
    def test_rejected_with_location(self, tmp_path: Path, case: str) -> None:
        """Each document Istio's validation rejects is rejected here, naming line and field."""
        text, expected = INVALID[case]
        found = errors(tmp_path, text)
        assert any(expected in line for line in found), found

    def test_duplicate_names(self, tmp_path: Path) -> None:
        """Two policies with one namespace/name are an error naming the first."""
        doc = POLICY + "  rules: [{}]\n"
        found = errors(tmp_path, doc + "---" + doc)
        assert any("duplicate AuthorizationPolicy istio-system/p" in e for e in found)


class TestAccepted:
    def test_allow_nothing_and_rules_forms(self, tmp_path: Path) -> None:
        """``spec: {}`` compiles to an ALLOW with no rules; ``rules: [{}]`` to one empty rule."""
        text = (
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
            "metadata: {name: nothing, namespace: istio-system}\nspec: {}\n---\n"
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: all, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{}]\n"
        )
        policy_set = load(tmp_path, text)
        policies = {p.key: p for p in policy_set.authz.policies}  # type: ignore[attr-defined]
        assert policies["istio-system/nothing"].action is Action.ALLOW
        assert policies["istio-system/nothing"].rules == ()
        assert len(policies["istio-system/all"].rules) == 1

    def test_istio_configmap_is_read(self, tmp_path: Path) -> None:
        """Istio's own ``istio`` ConfigMap supplies root namespace, providers and hops."""
        text = """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: istio, namespace: istio-system}
        data:
          mesh: |
            accessLogFile: /dev/stdout
            rootNamespace: mesh-root
            defaultConfig:
              discoveryAddress: istiod:15012
              gatewayTopology:
                numTrustedProxies: 2
            extensionProviders:
            - name: zipkin
              zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
            - name: ext
              envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000}
        """
        mesh = load(tmp_path, text).authz.mesh  # type: ignore[attr-defined]
        assert mesh.root_namespace == "mesh-root"
        assert mesh.num_trusted_proxies == 2
        assert list(mesh.providers) == ["ext"]

    def test_selection_by_namespace_labels_and_gateway(self, tmp_path: Path) -> None:
        """Root-namespace, same-namespace, selector-subset and targetRef policies attach."""

        def policy(name: str, namespace: str, extra: str = "") -> str:
            return (
                f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{extra}  rules: [{{}}]\n---\n"  # noqa: E501
            )

        text = (
            policy("root", "istio-system")
            + policy("same", "edge")
            + policy("other", "elsewhere")
            + policy("selected", "edge", "  selector: {matchLabels: {app: gw}}\n")
            + policy("unselected", "edge", "  selector: {matchLabels: {app: other}}\n")
            + policy(
                "targeted",
                "edge",
                "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: public}]\n",
            )
        )
        config = load(tmp_path, text).authz  # type: ignore[attr-defined]
        applied = config.compile(Workload.of("edge", {"app": "gw", "x": "y"}, "public"))
        assert sorted(p.meta.name for p in applied.allow) == [
            "root",
            "same",
            "selected",
            "targeted",
        ]
        other_gateway = config.compile(Workload.of("edge", {"app": "gw"}, "private"))
        assert "targeted" not in [p.meta.name for p in other_gateway.allow]
