"""Everything authz compiled from one policy directory, and the plans of its workloads.

``AuthzConfig.plan`` answers "what does a Check of this gateway need" with one
lookup: the context extensions that name the workload map to its ``WorkloadPlan``,
compiled on first use and held by the config. Replacing the config (a reload) drops
every plan with the set it was compiled from.
"""

import threading
from collections.abc import Mapping, Sequence

from services.authz.authorization_policy import AuthorizationPolicy
from services.authz.mesh_config import MeshSettings
from services.authz.plan import (
    PlanKey,
    WorkloadDefaults,
    WorkloadPlan,
    compile_plan,
    resolve_workload,
)
from services.authz.quota import NO_QUOTAS, QuotaRules
from services.authz.reads import ReadSet, compile_reads
from services.authz.request_authentication import RequestAuthentication
from services.authz.workloads import Workload

MAX_PLANS = 1024


class AuthzConfig:
    """Compiled authz policies; immutable once built, apart from the plans it caches."""

    def __init__(
        self,
        mesh: MeshSettings,
        policies: Sequence[AuthorizationPolicy] = (),
        authentications: Sequence[RequestAuthentication] = (),
        quotas: QuotaRules = NO_QUOTAS,
    ) -> None:
        self.mesh = mesh
        self.quotas = quotas  # (gateway, route) -> the quotas counted inside Check
        self.policies = tuple(sorted(policies, key=lambda p: p.key))
        self.authentications = tuple(sorted(authentications, key=lambda a: a.meta.key))
        self._plans: dict[PlanKey, WorkloadPlan] = {}  # insertion order: oldest first
        # What each plan's Checks read (the decision cache's key), compiled with the plan.
        self._reads: dict[WorkloadPlan, ReadSet] = {}
        self._compiling = threading.Lock()  # handler threads may miss on the same key

    def with_quotas(self, quotas: QuotaRules) -> "AuthzConfig":
        """The same policies, with the quotas the gateways count inside Check."""
        return AuthzConfig(self.mesh, self.policies, self.authentications, quotas)

    def plan(self, context: Mapping[str, str], defaults: WorkloadDefaults) -> WorkloadPlan:
        """The plan of the workload a Check's context extensions name (``defaults`` for
        what they leave out): the same object for the same workload while this set lives."""
        get = context.get
        key = (
            get("namespace", ""),
            get("labels"),
            get("gateway", ""),
            defaults.namespace,
            defaults.labels,
        )
        found = self._plans.get(key)
        if found is None:
            found = self._plan_for(key)
        return found

    def _plan_for(self, key: PlanKey) -> WorkloadPlan:
        with self._compiling:
            found = self._plans.get(key)
            if found is not None:  # compiled by another thread while this one waited
                return found
            workload = resolve_workload(key)
            # Context extensions that spell the same workload differently share its plan.
            found = next((p for p in self._plans.values() if p.workload == workload), None)
            if found is None:
                found = self.compile(workload)
                self._reads[found] = compile_reads(found, self.mesh)
            self._plans[key] = found
            if len(self._plans) > MAX_PLANS:
                dropped = self._plans.pop(next(iter(self._plans)))
                if dropped not in self._plans.values():
                    self._reads.pop(dropped, None)
            return found

    def reads(self, plan: WorkloadPlan) -> ReadSet:
        """What Checks under ``plan`` (one of this config's) read up to RBAC."""
        found = self._reads.get(plan)
        if found is None:  # a plan evicted meanwhile: compile it again
            found = self._reads[plan] = compile_reads(plan, self.mesh)
        return found

    def compile(self, workload: Workload) -> WorkloadPlan:
        """A new plan for ``workload`` (not cached: ``plan`` is the request path's lookup)."""
        return compile_plan(workload, self.policies, self.authentications, self.mesh.root_namespace)


def describe_authz(config: AuthzConfig) -> dict[str, object]:
    """The authz part of ``/debug/config``: mesh settings, policies, JWT rules and the
    quotas counted inside Check."""
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
        # gateway/route -> the RateLimitPolicies its Check counts (one hop)
        "quotasInCheck": {
            f"{gateway}/{route}": [rule.policy for rule in rules]
            for (gateway, route), rules in sorted(config.quotas.items())
        },
    }
