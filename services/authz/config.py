"""Everything authz compiled from one policy directory, and per-workload selections.

``AuthzConfig.for_workload`` answers "which policies and JWT rules apply to this
gateway" once per distinct workload (namespace, labels, gateway name) and caches
the answer for the life of the policy set; the request path then only walks the
few policies that apply.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.authz.authorization_policy import Action, AuthorizationPolicy
from services.authz.jwt.rules import JwtRule
from services.authz.mesh_config import MeshSettings
from services.authz.request_authentication import RequestAuthentication
from services.authz.workloads import Workload

MAX_CACHED_WORKLOADS = 1024


@dataclass(frozen=True, slots=True)
class WorkloadPolicies:
    """The enforced policies per action, the dry-run ones, and the JWT rules of one workload."""

    custom: tuple[AuthorizationPolicy, ...] = ()
    audit: tuple[AuthorizationPolicy, ...] = ()
    deny: tuple[AuthorizationPolicy, ...] = ()
    allow: tuple[AuthorizationPolicy, ...] = ()
    dry_run: tuple[AuthorizationPolicy, ...] = ()
    jwt_rules: tuple[JwtRule, ...] = ()
    custom_providers: int = 0  # distinct providers named by the enforced CUSTOM policies


class AuthzConfig:
    """Compiled authz policies; immutable once built."""

    def __init__(
        self,
        mesh: MeshSettings,
        policies: Sequence[AuthorizationPolicy] = (),
        authentications: Sequence[RequestAuthentication] = (),
    ) -> None:
        self.mesh = mesh
        self.policies = tuple(sorted(policies, key=lambda p: p.key))
        self.authentications = tuple(sorted(authentications, key=lambda a: a.meta.key))
        self._cache: OrderedDict[Workload, WorkloadPolicies] = OrderedDict()

    def for_workload(self, workload: Workload) -> WorkloadPolicies:
        cached = self._cache.get(workload)
        if cached is not None:
            return cached
        selected = self._select(workload)
        self._cache[workload] = selected
        if len(self._cache) > MAX_CACHED_WORKLOADS:
            self._cache.popitem(last=False)
        return selected

    def _select(self, workload: Workload) -> WorkloadPolicies:
        root = self.mesh.root_namespace
        applied = [p for p in self.policies if p.attachment.applies_to(workload, root)]
        enforced = [p for p in applied if not p.dry_run]
        rules = [
            rule
            for authn in self.authentications
            if authn.attachment.applies_to(workload, root)
            for rule in authn.rules
        ]
        return WorkloadPolicies(
            custom=tuple(p for p in enforced if p.action is Action.CUSTOM),
            custom_providers=len({p.provider for p in enforced if p.action is Action.CUSTOM}),
            audit=tuple(p for p in enforced if p.action is Action.AUDIT),
            deny=tuple(p for p in enforced if p.action is Action.DENY),
            allow=tuple(p for p in enforced if p.action is Action.ALLOW),
            dry_run=tuple(p for p in applied if p.dry_run),
            jwt_rules=tuple(sorted(rules, key=lambda r: r.issuer)),
        )


def describe_authz(config: AuthzConfig) -> dict[str, object]:
    """The authz part of ``/debug/config``: mesh settings, policies and JWT rules."""
    mesh = config.mesh

    def attachment(policy_attachment: object) -> str:
        labels = getattr(policy_attachment, "match_labels", None)
        refs = getattr(policy_attachment, "target_refs", ())
        if refs:
            return "targetRefs " + ",".join(f"{r.kind}/{r.name}" for r in refs)
        if labels:
            return "selector " + ",".join(f"{k}={v}" for k, v in sorted(labels))
        return "namespace-wide"

    return {
        "mesh": {
            "source": mesh.source,
            "rootNamespace": mesh.root_namespace,
            "pathNormalization": mesh.path_normalization.name,
            "numTrustedProxies": mesh.num_trusted_proxies,
            "extensionProviders": sorted(mesh.providers),
        },
        "authorizationPolicies": [
            f"{p.key}: {p.action.value}{' (dry-run)' if p.dry_run else ''}"
            f"{' provider ' + p.provider if p.provider else ''}, {len(p.rules)} rule(s), "
            f"{attachment(p.attachment)} ({p.file}:{p.line})"
            for p in config.policies
        ],
        "requestAuthentications": [
            f"{a.meta.key}: issuers {', '.join(r.issuer for r in a.rules) or '(none)'}, "
            f"{attachment(a.attachment)} ({a.file}:{a.line})"
            for a in config.authentications
        ],
    }
