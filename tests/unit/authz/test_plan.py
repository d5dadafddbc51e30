"""Workload plans: compiled once per workload per policy set, held by the set."""

import pytest

from services.authz import config as config_module
from services.authz.authorization_policy import Action
from services.authz.jwt.rules import JwtRule
from services.authz.plan import WorkloadDefaults
from tests.conformance.harness import (
    allow,
    audit,
    custom,
    deny,
    jwt_rule,
    op,
    request_authentication,
    rule,
)
from tests.jwt_issuer import ISSUER, jwks
from tests.unit.authz.plans import compiled

DEFAULTS = WorkloadDefaults()
SELECTED = allow(rule(to=op(paths=["/a"])), name="gw-only", selector={"istio": "ingressgateway"})


class TestPlanLookup:
    def test_same_plan_object_on_repeated_lookups(self) -> None:
        """Repeated lookups of one workload in one set give the very same plan object."""
        config = compiled(SELECTED)
        first = config.plan({"namespace": "edge", "gateway": "public"}, DEFAULTS)
        again = config.plan({"namespace": "edge", "gateway": "public"}, DEFAULTS)
        assert again is first

    def test_spellings_of_one_workload_share_the_plan(self) -> None:
        """An absent namespace and the default namespace spelled out are one workload, one plan."""
        config = compiled(SELECTED)
        implicit = config.plan({}, DEFAULTS)
        explicit = config.plan(
            {"namespace": "istio-system", "labels": "istio=ingressgateway"}, DEFAULTS
        )
        assert explicit is implicit

    def test_new_set_compiles_new_plans(self) -> None:
        """A reload (a new AuthzConfig) never hands out a plan of the set it replaced."""
        old = compiled(SELECTED)
        new = compiled(SELECTED)
        assert new.plan({}, DEFAULTS) is not old.plan({}, DEFAULTS)
        assert new.plan({}, DEFAULTS) is new.plan({}, DEFAULTS)

    def test_other_workloads_get_other_plans(self) -> None:
        """Different gateways of one set get their own plans."""
        config = compiled(SELECTED)
        assert config.plan({"gateway": "a"}, DEFAULTS) is not config.plan(
            {"gateway": "b"}, DEFAULTS
        )

    def test_other_defaults_are_another_workload(self) -> None:
        """The defaults that fill an absent namespace are part of the lookup."""
        config = compiled(SELECTED)
        elsewhere = WorkloadDefaults(namespace="edge", labels="app=edge")
        assert config.plan({}, elsewhere).workload.namespace == "edge"
        assert config.plan({}, DEFAULTS).workload.namespace == "istio-system"

    def test_the_oldest_plan_is_dropped_when_full(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The plan cache is bounded: past its size the oldest lookup is compiled again."""
        monkeypatch.setattr(config_module, "MAX_PLANS", 4)
        config = compiled(SELECTED)
        first = config.plan({"gateway": "g0"}, DEFAULTS)
        for number in range(1, 5):
            config.plan({"gateway": f"g{number}"}, DEFAULTS)
        again = config.plan({"gateway": "g0"}, DEFAULTS)
        assert again is not first
        assert again.workload == first.workload


class TestWorkloadResolution:
    def test_absent_labels_are_the_default_labels(self) -> None:
        """Without a labels extension the default labels apply, so the selector matches."""
        plan = compiled(SELECTED).plan({}, DEFAULTS)
        assert [p.meta.name for p in plan.allow] == ["gw-only"]

    def test_present_empty_labels_are_no_labels(self) -> None:
        """A labels extension that is present but empty names a gateway without labels."""
        plan = compiled(SELECTED).plan({"labels": ""}, DEFAULTS)
        assert plan.allow == ()
        assert plan.workload.labels == frozenset()

    def test_unparseable_labels_fall_back_to_the_defaults(self) -> None:
        """Labels that do not parse are treated as absent (the default labels)."""
        plan = compiled(SELECTED).plan({"labels": "no-equals-sign"}, DEFAULTS)
        assert plan.workload.labels == frozenset({("istio", "ingressgateway")})


class TestPlanContents:
    def test_policies_split_by_action_and_dry_run(self) -> None:
        """Enforced policies are split per action; dry-run ones, and the dry-run ALLOWs, apart."""
        config = compiled(
            allow(rule(), name="a"),
            deny(rule(), name="d"),
            audit(rule(), name="au"),
            custom("ext", rule(), name="c1"),
            custom("ext", rule(), name="c2"),
            custom("other", rule(), name="c3"),
            allow(rule(), name="shadow-allow", dry_run="true"),
            deny(rule(), name="shadow-deny", dry_run="true"),
        )
        plan = config.plan({}, DEFAULTS)
        assert [p.meta.name for p in plan.allow] == ["a"]
        assert [p.meta.name for p in plan.deny] == ["d"]
        assert [p.meta.name for p in plan.audit] == ["au"]
        assert [p.meta.name for p in plan.custom] == ["c1", "c2", "c3"]
        assert plan.custom_providers == 2
        assert [p.meta.name for p in plan.dry_run] == ["shadow-allow", "shadow-deny"]
        assert [p.action for p in plan.dry_run_allow] == [Action.ALLOW]

    def test_jwt_plan_is_compiled_from_the_workloads_rules(self) -> None:
        """The plan holds the JWT rules that attach (by issuer) and their compiled JwtPlan."""
        config = compiled(
            request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))),
            request_authentication(
                jwt_rule("https://elsewhere", jwks=jwks("rsa")),
                name="other",
                selector={"app": "other"},
            ),
        )
        plan = config.plan({}, DEFAULTS)
        assert [r.issuer for r in plan.jwt_rules] == [ISSUER]
        assert plan.jwt.rules == plan.jwt_rules
        assert all(isinstance(r, JwtRule) for r in plan.jwt.rules)

    def test_no_rules_compile_an_empty_jwt_plan(self) -> None:
        """A workload without RequestAuthentication still has a (rule-less) JwtPlan."""
        plan = compiled(SELECTED).plan({}, DEFAULTS)
        assert plan.jwt_rules == () and plan.jwt.rules == ()
