"""Test helpers: a policy set compiled straight from document dicts (no loader, no files)."""

from collections.abc import Mapping
from typing import Any

from services.authz.authorization_policy import compile_policy
from services.authz.config import AuthzConfig
from services.authz.mesh_config import MeshSettings
from services.authz.request_authentication import compile_request_authentication
from services.policy.errors import ErrorSink


def compiled(*documents: Mapping[str, Any], mesh: MeshSettings | None = None) -> AuthzConfig:
    """An ``AuthzConfig`` of AuthorizationPolicy / RequestAuthentication documents."""
    sink = ErrorSink("test.yaml")
    policies = []
    authentications = []
    for line, document in enumerate(documents, start=1):
        if document["kind"] == "AuthorizationPolicy":
            policy = compile_policy(dict(document), line, sink)
            if policy is not None:
                policies.append(policy)
        else:
            authentication = compile_request_authentication(dict(document), line, sink)
            if authentication is not None:
                authentications.append(authentication)
    assert not sink.errors, sink.errors
    return AuthzConfig(mesh or MeshSettings(), policies, authentications)
