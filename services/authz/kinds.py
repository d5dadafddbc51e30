"""The kinds the authz service reads, and what it makes of them as a set.

Istio's ``AuthorizationPolicy`` and ``RequestAuthentication`` (``security.istio.io``
v1 and v1beta1), and the mesh settings they are read with: mixerless's
``MeshConfig``, or Istio's own ``istio`` ConfigMap. A set holds at most one mesh.
"""

from typing import Any

from services.authz.authorization_policy import AuthorizationPolicy, compile_policy
from services.authz.config import AuthzConfig
from services.authz.mesh_config import MeshSettings, compile_istio_configmap, compile_mesh_config
from services.authz.request_authentication import (
    RequestAuthentication,
    compile_request_authentication,
)
from services.policy.errors import ErrorSink
from services.policy.kinds import Collected, DocumentKind

SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
MESH_CONFIG = ("mixerless.io/v1alpha1", "MeshConfig")
CONFIGMAP = ("v1", "ConfigMap")


def _mesh(body: Any, line: int, sink: ErrorSink) -> MeshSettings | None:
    """A MeshConfig, or Istio's ``istio`` ConfigMap (the only ConfigMap read)."""
    if (body.get("apiVersion"), body.get("kind")) == MESH_CONFIG:
        return compile_mesh_config(body, line, sink)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or metadata.get("name") != "istio":
        sink.add(line, "metadata.name", "the only ConfigMap mixerless reads is Istio's 'istio'")
        return None
    return compile_istio_configmap(body, line, sink)


AUTHORIZATION_POLICY: DocumentKind[AuthorizationPolicy] = DocumentKind(
    "AuthorizationPolicy",
    frozenset((version, "AuthorizationPolicy") for version in SECURITY),
    compile_policy,
    key=lambda policy: policy.key,
)
REQUEST_AUTHENTICATION: DocumentKind[RequestAuthentication] = DocumentKind(
    "RequestAuthentication",
    frozenset((version, "RequestAuthentication") for version in SECURITY),
    compile_request_authentication,
    key=lambda authn: authn.meta.key,
)
MESH: DocumentKind[MeshSettings] = DocumentKind(
    "MeshConfig", frozenset({MESH_CONFIG, CONFIGMAP}), _mesh
)
KINDS = (AUTHORIZATION_POLICY, REQUEST_AUTHENTICATION, MESH)


def link(collected: Collected) -> AuthzConfig:
    """The set's authz config: its policies, read with its one mesh (or Istio's defaults)."""
    meshes = collected.of(MESH)
    for extra in meshes[1:]:
        extra.sink.add(
            extra.line, "kind", f"a second mesh config (first: {meshes[0].value.source})"
        )
    mesh = meshes[0].value if meshes else MeshSettings()
    return AuthzConfig(
        mesh,
        [compiled.value for compiled in collected.of(AUTHORIZATION_POLICY)],
        [compiled.value for compiled in collected.of(REQUEST_AUTHENTICATION)],
    )
