"""The authorization stages, as pure functions over compiled policies and attributes.

Istio's order (one RBAC filter each, after normalization): CUSTOM, then JWT,
then AUDIT (marks only), DENY, ALLOW. No enforced ALLOW policy means allow; an
ALLOW policy with no rules allows nothing; dry-run policies are evaluated and
reported, never enforced, and a dry-run ALLOW does not count as an ALLOW policy.
"""

from dataclasses import dataclass

from services.authz.attributes import Attributes
from services.authz.authorization_policy import Action, AuthorizationPolicy
from services.authz.config import WorkloadPolicies
from services.authz.model import Reason


@dataclass(frozen=True, slots=True)
class CustomMatch:
    """A CUSTOM policy whose rule matched: its provider must be asked."""

    policy: AuthorizationPolicy
    rule: int


@dataclass(frozen=True, slots=True)
class RbacOutcome:
    allowed: bool
    reason: Reason
    audit: tuple[str, ...] = ()
    dry_run: tuple[str, ...] = ()


def custom_matches(policies: WorkloadPolicies, attributes: Attributes) -> list[CustomMatch]:
    """The enforced CUSTOM policies whose rules match, one entry per provider (first wins)."""
    found: list[CustomMatch] = []
    providers: set[str] = set()
    for policy in policies.custom:
        if policy.provider in providers:
            continue
        index = policy.first_match(attributes)
        if index is not None:
            providers.add(policy.provider)
            found.append(CustomMatch(policy, index))
    return found


def rbac(policies: WorkloadPolicies, attributes: Attributes) -> RbacOutcome:
    """AUDIT, DENY and ALLOW for a request whose identity (if any) is already known."""
    audit = tuple(
        f"{policy.key} rule {index}"
        for policy in policies.audit
        if (index := policy.first_match(attributes)) is not None
    )
    dry_run = _dry_run(policies.dry_run, attributes)
    for policy in policies.deny:
        index = policy.first_match(attributes)
        if index is not None:
            return RbacOutcome(False, Reason("deny", policy.key, index), audit, dry_run)
    if not policies.allow:
        reason = Reason("default", detail="no ALLOW policy applies")
        return RbacOutcome(True, reason, audit, dry_run)
    for policy in policies.allow:
        index = policy.first_match(attributes)
        if index is not None:
            return RbacOutcome(True, Reason("allow", policy.key, index), audit, dry_run)
    reason = Reason("allow", detail="no ALLOW policy matched")
    return RbacOutcome(False, reason, audit, dry_run)


def _dry_run(policies: tuple[AuthorizationPolicy, ...], attributes: Attributes) -> tuple[str, ...]:
    """What the dry-run policies would have done, as Istio's shadow rules report it."""
    notes: list[str] = []
    allow_policies = [p for p in policies if p.action is Action.ALLOW]
    for policy in policies:
        index = policy.first_match(attributes)
        if policy.action is Action.DENY and index is not None:
            notes.append(f"dry-run DENY {policy.key} rule {index} would deny")
        elif policy.action is Action.CUSTOM and index is not None:
            notes.append(f"dry-run CUSTOM {policy.key} rule {index} would ask {policy.provider}")
        elif policy.action is Action.AUDIT and index is not None:
            notes.append(f"dry-run AUDIT {policy.key} rule {index} would audit")
        elif policy.action is Action.ALLOW and index is not None:
            notes.append(f"dry-run ALLOW {policy.key} rule {index} would allow")
    if allow_policies and not any(p.first_match(attributes) is not None for p in allow_policies):
        notes.append("dry-run ALLOW policies would deny (none matched)")
    return tuple(notes)
