"""Policy evaluation, as pure functions over a workload's plan and a request's attributes.

Istio's order (one RBAC filter each, after normalization): CUSTOM, then JWT,
then AUDIT (marks only), DENY, ALLOW. No enforced ALLOW policy means allow; an
ALLOW policy with no rules allows nothing; dry-run policies are evaluated and
reported, never enforced, and a dry-run ALLOW does not count as an ALLOW policy.
"""

from dataclasses import dataclass

from services.authz.answer import Denial, Verdict
from services.authz.attributes import Attributes
from services.authz.authorization_policy import Action, AuthorizationPolicy
from services.authz.model import RBAC_DENIED, Reason
from services.authz.plan import WorkloadPlan


@dataclass(frozen=True, slots=True)
class CustomMatch:
    """A CUSTOM policy whose rule matched: its provider must be asked."""

    policy: AuthorizationPolicy
    rule: int


NO_ALLOW_POLICY = Reason("default", detail="no ALLOW policy applies")
NO_ALLOW_MATCHED = Reason("allow", detail="no ALLOW policy matched")


def custom_matches(plan: WorkloadPlan, attributes: Attributes) -> list[CustomMatch]:
    """The enforced CUSTOM policies whose rules match, one entry per provider (first wins)."""
    found: list[CustomMatch] = []
    providers: set[str] = set()
    for policy in plan.custom:
        if policy.provider in providers:
            continue
        index = policy.first_match(attributes)
        if index is not None:
            providers.add(policy.provider)
            found.append(CustomMatch(policy, index))
    return found


def rbac(plan: WorkloadPlan, attributes: Attributes) -> Denial | Verdict:
    """AUDIT, DENY and ALLOW for a request whose identity (if any) is already known."""
    audit = _audit(plan, attributes) if plan.audit else ()
    dry_run = _dry_run(plan, attributes) if plan.dry_run else ()
    for policy in plan.deny:
        index = policy.first_match(attributes)
        if index is not None:
            return Denial(403, RBAC_DENIED, Reason("deny", policy.key, index), (), audit, dry_run)
    if not plan.allow:
        return Verdict(NO_ALLOW_POLICY, audit, dry_run)
    for policy in plan.allow:
        index = policy.first_match(attributes)
        if index is not None:
            return Verdict(Reason("allow", policy.key, index), audit, dry_run)
    return Denial(403, RBAC_DENIED, NO_ALLOW_MATCHED, (), audit, dry_run)


def _audit(plan: WorkloadPlan, attributes: Attributes) -> tuple[str, ...]:
    """The AUDIT policies that match (they only mark the request)."""
    return tuple(
        f"{policy.key} rule {index}"
        for policy in plan.audit
        if (index := policy.first_match(attributes)) is not None
    )


def _dry_run(plan: WorkloadPlan, attributes: Attributes) -> tuple[str, ...]:
    """What the dry-run policies would have done, as Istio's shadow rules report it.

    Each policy is evaluated once; the dry-run ALLOW policies would deny when none of
    them matched (their shadow rules OR like enforced ALLOW policies).
    """
    notes: list[str] = []
    allowed = False
    for policy in plan.dry_run:
        index = policy.first_match(attributes)
        if index is None:
            continue
        action = policy.action
        if action is Action.DENY:
            notes.append(f"dry-run DENY {policy.key} rule {index} would deny")
        elif action is Action.CUSTOM:
            notes.append(f"dry-run CUSTOM {policy.key} rule {index} would ask {policy.provider}")
        elif action is Action.AUDIT:
            notes.append(f"dry-run AUDIT {policy.key} rule {index} would audit")
        elif action is Action.ALLOW:
            allowed = True
            notes.append(f"dry-run ALLOW {policy.key} rule {index} would allow")
    if plan.dry_run_allow and not allowed:
        notes.append("dry-run ALLOW policies would deny (none matched)")
    return tuple(notes)
