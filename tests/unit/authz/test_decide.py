"""The RBAC stage (``decide.rbac``): a Denial or a Verdict, dry-run policies evaluated once."""

from dataclasses import dataclass, replace
from typing import Any

from services.authz import decide
from services.authz.answer import Denial, Verdict
from services.authz.attributes import Attributes
from services.authz.authorization_policy import AuthorizationPolicy, Check, Rule
from services.authz.model import RBAC_DENIED
from services.authz.plan import WorkloadDefaults, WorkloadPlan
from tests.conformance.harness import allow, audit, deny, op, rule
from tests.unit.authz.plans import compiled

DEFAULTS = WorkloadDefaults()


class Never:
    """A matcher no value satisfies."""

    def matches(self, value: Any) -> bool:
        return False


@dataclass
class CountingRead:
    """An attribute reader that counts how often a rule asks for it."""

    reads: int = 0

    def __call__(self, attributes: Attributes) -> Any:
        self.reads += 1
        return attributes.path


def counted(policy: AuthorizationPolicy, read: CountingRead, *, matches: bool) -> Any:
    """``policy`` with one rule whose single check reads through ``read``."""
    check = Check("counted", read, None if matches else Never(), None)
    return replace(policy, rules=(Rule(None, None, (check,)),))


def plan_of(*documents: Any) -> WorkloadPlan:
    return compiled(*documents).plan({}, DEFAULTS)


class TestDryRun:
    def test_matching_dry_run_allow_is_evaluated_once(self) -> None:
        """A dry-run ALLOW that matches is evaluated once and reported as 'would allow'."""
        plan = plan_of(allow(rule(), name="shadow", dry_run="true"))
        read = CountingRead()
        shadow = counted(plan.dry_run[0], read, matches=True)
        plan = replace(plan, dry_run=(shadow,), dry_run_allow=(shadow,))
        verdict = decide.rbac(plan, Attributes(path="/x"))
        assert read.reads == 1
        assert verdict.dry_run == ("dry-run ALLOW istio-system/shadow rule 0 would allow",)

    def test_unmatched_dry_run_allow_is_evaluated_once(self) -> None:
        """A dry-run ALLOW that does not match is evaluated once for the 'none matched' note."""
        plan = plan_of(allow(rule(), name="shadow", dry_run="true"))
        read = CountingRead()
        shadow = counted(plan.dry_run[0], read, matches=False)
        plan = replace(plan, dry_run=(shadow,), dry_run_allow=(shadow,))
        verdict = decide.rbac(plan, Attributes(path="/x"))
        assert read.reads == 1
        assert verdict.dry_run == ("dry-run ALLOW policies would deny (none matched)",)

    def test_notes_follow_policy_order(self) -> None:
        """Dry-run notes come in evaluation (name) order, whatever the action."""
        plan = plan_of(
            deny(rule(), name="b-deny", dry_run="true"),
            allow(rule(to=op(paths=["/nope"])), name="a-allow", dry_run="true"),
            audit(rule(), name="c-audit", dry_run="true"),
        )
        verdict = decide.rbac(plan, Attributes(path="/x"))
        assert verdict.dry_run == (
            "dry-run DENY istio-system/b-deny rule 0 would deny",
            "dry-run AUDIT istio-system/c-audit rule 0 would audit",
            "dry-run ALLOW policies would deny (none matched)",
        )
        assert isinstance(verdict, Verdict)  # dry-run never enforces


class TestRbac:
    def test_matching_deny_is_a_denial(self) -> None:
        """A matching DENY policy is a 403 Denial naming the policy and rule."""
        plan = plan_of(deny(rule(to=op(paths=["/x"])), name="block"))
        denial = decide.rbac(plan, Attributes(path="/x"))
        assert isinstance(denial, Denial)
        assert (denial.status, denial.body) == (403, RBAC_DENIED)
        assert str(denial.reason) == "deny: policy istio-system/block, rule 0"

    def test_no_allow_policy_allows(self) -> None:
        """Without an enforced ALLOW policy the request is allowed by default."""
        verdict = decide.rbac(plan_of(deny(rule(to=op(paths=["/y"])))), Attributes(path="/x"))
        assert isinstance(verdict, Verdict)
        assert str(verdict.reason) == "default: no ALLOW policy applies"

    def test_matching_allow_is_a_verdict(self) -> None:
        """A matching ALLOW policy allows, naming the policy and rule."""
        verdict = decide.rbac(plan_of(allow(rule(to=op(paths=["/x"])))), Attributes(path="/x"))
        assert isinstance(verdict, Verdict)
        assert str(verdict.reason) == "allow: policy istio-system/allow, rule 0"

    def test_unmatched_allow_is_a_denial(self) -> None:
        """ALLOW policies none of which matches deny with 403."""
        denial = decide.rbac(plan_of(allow(rule(to=op(paths=["/y"])))), Attributes(path="/x"))
        assert isinstance(denial, Denial)
        assert str(denial.reason) == "allow: no ALLOW policy matched"

    def test_audit_marks_are_carried_on_a_denial(self) -> None:
        """AUDIT matches are reported with the answer, also when it is a denial."""
        plan = plan_of(audit(rule(), name="watch"), deny(rule(), name="block"))
        denial = decide.rbac(plan, Attributes(path="/x"))
        assert isinstance(denial, Denial)
        assert denial.audit == ("istio-system/watch rule 0",)
