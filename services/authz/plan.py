"""What a Check needs that depends only on the policy set and the workload: the plan.

A ``WorkloadPlan`` is compiled once per workload per policy set (``AuthzConfig.plan``
builds it on first use and keeps it until the set is replaced): the enforced policies
per action, the dry-run ones (the dry-run ALLOW policies split out, for the "none
matched" note), how many CUSTOM providers apply, and the compiled JWT plan. The
request path then only walks what the plan already selected.

A workload is named by a Check's context extensions (``namespace``, ``labels``,
``gateway``); what they leave out comes from ``WorkloadDefaults`` (the service's
``--workload-namespace`` / ``--workload-labels``).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from services.authz.authorization_policy import Action, AuthorizationPolicy
from services.authz.jwt.plan import JwtPlan, compile_jwt_plan
from services.authz.jwt.rules import JwtRule
from services.authz.request_authentication import RequestAuthentication
from services.authz.workloads import Workload, parse_labels


@dataclass(frozen=True, slots=True)
class WorkloadDefaults:
    """The workload assumed when a CheckRequest's context extensions do not name one."""

    namespace: str = "istio-system"
    labels: str = "istio=ingressgateway"


PlanKey = tuple[str, str | None, str, str, str]
"""Context ``namespace``, ``labels`` (None when absent) and ``gateway``, then the default
namespace and labels: all strings, whose hashes Python keeps, so a lookup hashes nothing."""


@dataclass(frozen=True, slots=True, eq=False)
class WorkloadPlan:
    """Everything a Check of one workload needs from the policy set, compiled once.

    Compared by identity: a plan is one object per workload per policy set.
    """

    workload: Workload
    jwt: JwtPlan  # compile_jwt_plan(jwt_rules)
    custom: tuple[AuthorizationPolicy, ...] = ()
    custom_providers: int = 0  # distinct providers named by the enforced CUSTOM policies
    audit: tuple[AuthorizationPolicy, ...] = ()
    deny: tuple[AuthorizationPolicy, ...] = ()
    allow: tuple[AuthorizationPolicy, ...] = ()
    dry_run: tuple[AuthorizationPolicy, ...] = ()  # every dry-run policy, in evaluation order
    dry_run_allow: tuple[AuthorizationPolicy, ...] = ()  # the dry-run ALLOW ones among them
    jwt_rules: tuple[JwtRule, ...] = ()  # ordered by issuer


def resolve_workload(key: PlanKey) -> Workload:
    """The workload a plan key names; absent parts come from its defaults.

    A ``labels`` extension that is present, even empty, names the gateway's own labels;
    only its absence (or labels that do not parse) falls back to the default labels.
    """
    namespace, labels, gateway, default_namespace, default_labels = key
    parsed: dict[str, str] | None = None
    if labels is not None:
        try:
            parsed = parse_labels(labels)
        except ValueError:
            parsed = None
    if parsed is None:
        parsed = parse_labels(default_labels)
    return Workload.of(namespace or default_namespace, parsed, gateway)


def compile_plan(
    workload: Workload,
    policies: Sequence[AuthorizationPolicy],
    authentications: Sequence[RequestAuthentication],
    root_namespace: str,
) -> WorkloadPlan:
    """Select what attaches to ``workload`` (policies in evaluation order) and compile it."""
    applied = [p for p in policies if p.attachment.applies_to(workload, root_namespace)]
    enforced = [p for p in applied if not p.dry_run]
    dry_run = tuple(p for p in applied if p.dry_run)
    rules = tuple(
        sorted(
            (
                rule
                for authn in authentications
                if authn.attachment.applies_to(workload, root_namespace)
                for rule in authn.rules
            ),
            key=lambda r: r.issuer,
        )
    )
    custom = tuple(p for p in enforced if p.action is Action.CUSTOM)
    return WorkloadPlan(
        workload=workload,
        jwt=compile_jwt_plan(rules),
        custom=custom,
        custom_providers=len({p.provider for p in custom}),
        audit=tuple(p for p in enforced if p.action is Action.AUDIT),
        deny=tuple(p for p in enforced if p.action is Action.DENY),
        allow=tuple(p for p in enforced if p.action is Action.ALLOW),
        dry_run=dry_run,
        dry_run_allow=tuple(p for p in dry_run if p.action is Action.ALLOW),
        jwt_rules=rules,
    )
