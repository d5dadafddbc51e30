"""Actions and their order (AUDIT, DENY, ALLOW; CUSTOM is in test_custom.py), empty
policies, dry-run, and which policies apply to which workload (reference §1.1, §1.2, §1.10).
"""

import pytest

from tests.conformance.conftest import Launcher
from tests.conformance.harness import (
    RBAC_DENIED,
    Case,
    allow,
    audit,
    authorization_policy,
    bearer,
    deny,
    jwt_rule,
    matrix,
    op,
    params,
    request_authentication,
    rule,
    src,
    yaml_docs,
)
from tests.jwt_issuer import ISSUER, jwks, token

GATEWAY_GROUP = "gateway.networking.k8s.io"
ADMIN = op(paths=["/admin", "/admin/*"])
PUBLIC = op(paths=["/public", "/public/*"])
EVERYTHING: dict = {}


def path(value, **more):
    return {"path": value, **more}


def workload(namespace="istio-system", labels="istio=ingressgateway", gateway=""):
    """Context extensions naming the workload the request passed through."""
    context = {"namespace": namespace, "labels": labels}
    if gateway:
        context["gateway"] = gateway
    return {"context": context}


ORDER_CASES = [
    Case("no policy at all: allow", yaml_docs(), path("/admin"), 200, ref="§1.2 step 3"),
    *matrix(
        "ALLOW only",
        yaml_docs(allow(rule(to=PUBLIC))),
        [("matching rule", path("/public/x"), 200), ("no rule matches", path("/admin"), 403)],
        ref="§1.2 steps 4-5",
    ),
    Case(
        "ALLOW miss answers 403 'RBAC: access denied'",
        yaml_docs(allow(rule(to=PUBLIC))),
        path("/other"),
        403,
        expect_body=RBAC_DENIED,
        ref="§0 RBAC deny",
    ),
    *matrix(
        "DENY only",
        yaml_docs(deny(rule(to=ADMIN))),
        [("matching", path("/admin"), 403), ("not matching: no ALLOW policy", path("/x"), 200)],
        ref="§1.2 steps 2-3",
    ),
    *matrix(
        "DENY beats ALLOW",
        yaml_docs(allow(rule()), deny(rule(to=ADMIN))),
        [("both match", path("/admin/x"), 403), ("only ALLOW", path("/public"), 200)],
        ref="§1.2 DENY before ALLOW",
    ),
    *matrix(
        "several ALLOW policies: any one allows",
        yaml_docs(
            allow(rule(to=PUBLIC), name="public"),
            allow(rule(to=op(paths=["/status"])), name="status"),
        ),
        [
            ("first", path("/public"), 200),
            ("second", path("/status"), 200),
            ("neither", path("/admin"), 403),
        ],
        ref="§1.1 all applicable policies apply together",
    ),
    *matrix(
        "several DENY policies: any one denies",
        yaml_docs(deny(rule(to=ADMIN), name="d1"), deny(rule(to=PUBLIC), name="d2")),
        [
            ("first", path("/admin"), 403),
            ("second", path("/public"), 403),
            ("none", path("/"), 200),
        ],
        ref="§1.1",
    ),
    *matrix(
        "allow-nothing spec: {}",
        yaml_docs(authorization_policy(None, name="allow-nothing", no_rules=True)),
        [("everything is denied", path("/public"), 403)],
        ref="§1.2 empty cases: spec {} denies all",
    ),
    *matrix(
        "ALLOW without rules",
        yaml_docs(authorization_policy("ALLOW", name="empty", no_rules=True)),
        [("denies all", path("/"), 403)],
        ref="§1.2 ALLOW with no rules never matches",
    ),
    *matrix(
        "ALLOW with rules: []",
        yaml_docs(authorization_policy("ALLOW", name="empty-list")),
        [("denies all", path("/"), 403)],
        ref="§1.2 an empty rules list produces rbacPolicyMatchNever",
    ),
    *matrix(
        "allow-nothing plus a matching ALLOW",
        yaml_docs(
            authorization_policy(None, name="allow-nothing", no_rules=True),
            allow(rule(to=PUBLIC)),
        ),
        [("the other ALLOW allows", path("/public"), 200), ("others denied", path("/x"), 403)],
        ref="§1.2 an ALLOW rule that matches allows",
    ),
    *matrix(
        "ALLOW rules: [{}] allows all",
        yaml_docs(allow(EVERYTHING)),
        [("anything", path("/anything", method="DELETE"), 200)],
        ref="§1.2 rules [{}] always matches",
    ),
    *matrix(
        "DENY rules: [{}] denies all",
        yaml_docs(deny(EVERYTHING), allow(EVERYTHING)),
        [("anything", path("/public"), 403)],
        ref="§1.2 rules [{}] as DENY denies everything",
    ),
    *matrix(
        "AUDIT alone never changes the decision",
        yaml_docs(audit(EVERYTHING)),
        [("allowed", path("/admin"), 200)],
        ref="§1.2 AUDIT only marks",
    ),
    *matrix(
        "AUDIT does not count as an ALLOW policy",
        yaml_docs(audit(rule(to=PUBLIC)), allow(rule(to=op(paths=["/status"])))),
        [("audited but not allowed", path("/public"), 403), ("allowed", path("/status"), 200)],
        ref="§1.2 AUDIT never changes the decision",
    ),
    *matrix(
        "AUDIT cannot save a DENY",
        yaml_docs(audit(rule(to=ADMIN)), deny(rule(to=ADMIN))),
        [("denied", path("/admin"), 403)],
        ref="§1.2",
    ),
]

DRY_RUN_CASES = [
    *matrix(
        "dry-run ALLOW alone does not count as an ALLOW policy",
        yaml_docs(allow(rule(to=PUBLIC), dry_run="true")),
        [("not matched, still allowed", path("/admin"), 200), ("matched", path("/public"), 200)],
        ref="§1.10 dry-run-allow-out.yaml",
    ),
    *matrix(
        "dry-run ALLOW next to an enforced ALLOW",
        yaml_docs(
            allow(EVERYTHING, name="shadow-all", dry_run="true"),
            allow(rule(to=PUBLIC), name="enforced"),
        ),
        [("the dry-run match does not allow", path("/admin"), 403)],
        ref="§1.10 dry-run never affects the decision",
    ),
    *matrix(
        "dry-run DENY does not deny",
        yaml_docs(deny(rule(to=ADMIN), dry_run="true")),
        [("matched, still allowed", path("/admin"), 200)],
        ref="§1.10",
    ),
    *matrix(
        "dry-run allow-nothing does not deny",
        yaml_docs(authorization_policy(None, name="shadow", no_rules=True, dry_run="true")),
        [("allowed", path("/admin"), 200)],
        ref="§1.10",
    ),
    *matrix(
        "dry-run false is enforced",
        yaml_docs(deny(rule(to=ADMIN), dry_run="false")),
        [("denied", path("/admin"), 403)],
        ref="§1.10 strconv.ParseBool",
    ),
    *matrix(
        "dry-run 'True' (ParseBool) is dry-run",
        yaml_docs(deny(rule(to=ADMIN), dry_run="True")),
        [("allowed", path("/admin"), 200)],
        ref="§1.10 strconv.ParseBool accepts True",
    ),
    *matrix(
        "dry-run '1' (ParseBool) is dry-run",
        yaml_docs(deny(rule(to=ADMIN), dry_run="1")),
        [("allowed", path("/admin"), 200)],
        ref="§1.10 strconv.ParseBool accepts 1",
    ),
]

FOO = workload("foo", "app=gw,version=v1")
FOO_GATEWAY = workload("foo", "app=gw,version=v1", gateway="public-gw")
SELECTION_CASES = [
    *matrix(
        "root-namespace policy without selector is mesh-wide",
        yaml_docs(deny(rule(to=ADMIN))),
        [
            ("default workload", path("/admin"), 403),
            ("workload in foo", path("/admin", **FOO), 403),
        ],
        ref="§1.1 no selector in the root namespace = whole mesh",
    ),
    *matrix(
        "policy in another namespace does not apply",
        yaml_docs(deny(rule(to=ADMIN), namespace="bar")),
        [
            ("workload in foo", path("/admin", **FOO), 200),
            ("workload in bar", path("/admin", **workload("bar", "app=gw")), 403),
        ],
        ref="§1.1 only the root and the workload's namespace are read",
    ),
    *matrix(
        "policy in the workload namespace applies",
        yaml_docs(deny(rule(to=ADMIN), namespace="foo")),
        [
            ("workload in foo", path("/admin", **FOO), 403),
            ("root-namespace gateway", path("/admin"), 200),
        ],
        ref="§1.1",
    ),
    *matrix(
        "root and workload namespace policies combine",
        yaml_docs(
            allow(rule(to=PUBLIC), name="root-allow"),
            allow(rule(to=op(paths=["/foo-only"])), name="foo-allow", namespace="foo"),
        ),
        [
            ("root ALLOW for foo", path("/public", **FOO), 200),
            ("foo ALLOW for foo", path("/foo-only", **FOO), 200),
            ("foo ALLOW not for the root gateway", path("/foo-only"), 403),
        ],
        ref="§1.1 all applicable policies apply together",
    ),
    *matrix(
        "selector matchLabels subset",
        yaml_docs(deny(rule(to=ADMIN), namespace="foo", selector={"app": "gw"})),
        [
            ("labels are a superset", path("/admin", **FOO), 403),
            ("label value differs", path("/admin", **workload("foo", "app=other")), 200),
            ("label missing", path("/admin", **workload("foo", "version=v1")), 200),
        ],
        ref="§1.1 selector: matchLabels subset of workload labels",
    ),
    *matrix(
        "selector with two labels",
        yaml_docs(deny(rule(to=ADMIN), namespace="foo", selector={"app": "gw", "version": "v2"})),
        [("one label differs", path("/admin", **FOO), 200)],
        ref="§1.1",
    ),
    *matrix(
        "root-namespace selector matches in every namespace",
        yaml_docs(deny(rule(to=ADMIN), selector={"app": "gw"})),
        [
            ("labelled workload in foo", path("/admin", **FOO), 403),
            ("unlabelled workload in foo", path("/admin", **workload("foo", "app=x")), 200),
        ],
        ref="§1.1 root-namespace selector",
    ),
    *matrix(
        "empty matchLabels matches everything",
        yaml_docs(deny(rule(to=ADMIN), namespace="foo", selector={})),
        [("any workload in foo", path("/admin", **workload("foo", "a=b")), 403)],
        ref="§1.1 empty matchLabels",
    ),
    *matrix(
        "targetRefs to a Gateway",
        yaml_docs(
            deny(
                rule(to=ADMIN),
                namespace="foo",
                target_refs=[{"group": GATEWAY_GROUP, "kind": "Gateway", "name": "public-gw"}],
            )
        ),
        [
            ("that gateway", path("/admin", **FOO_GATEWAY), 403),
            (
                "another gateway",
                path("/admin", **workload("foo", "app=gw", gateway="other-gw")),
                200,
            ),
            ("not a gateway (sidecar): ignored", path("/admin", **FOO), 200),
        ],
        ref="§1.1 targetRefs",
    ),
    *matrix(
        "targetRefs in the root namespace do not reach other namespaces",
        yaml_docs(
            deny(
                rule(to=ADMIN),
                target_refs=[{"group": GATEWAY_GROUP, "kind": "Gateway", "name": "public-gw"}],
            )
        ),
        [("gateway public-gw in foo", path("/admin", **FOO_GATEWAY), 200)],
        ref="§1.1 Gateway targetRef = same namespace",
    ),
    *matrix(
        "a Gateway API gateway accepts selector policies",
        yaml_docs(deny(rule(to=ADMIN), namespace="foo", selector={"app": "gw"})),
        [("selected gateway", path("/admin", **FOO_GATEWAY), 403)],
        ref="§1.1 ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY",
    ),
    *matrix(
        "RequestAuthentication follows the same selection",
        yaml_docs(
            request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa")), namespace="bar"),
        ),
        [
            (
                "not applied in foo: a broken token is not checked",
                path("/", headers=bearer("not-a-jwt"), **FOO),
                200,
            ),
            (
                "applied in bar",
                path("/", headers=bearer("not-a-jwt"), **workload("bar", "app=gw")),
                401,
            ),
        ],
        ref="§2.1 rules from root, namespace and selected workload",
    ),
    *matrix(
        "RequestAuthentication selector",
        yaml_docs(
            request_authentication(
                jwt_rule(ISSUER, jwks=jwks("rsa")), namespace="foo", selector={"app": "api"}
            ),
        ),
        [
            ("unselected workload", path("/", headers=bearer("x.y.z"), **FOO), 200),
            (
                "selected workload",
                path("/", headers=bearer("x.y.z"), **workload("foo", "app=api")),
                401,
            ),
        ],
        ref="§2.1",
    ),
    *matrix(
        "requestPrincipals from a root RequestAuthentication at a foo workload",
        yaml_docs(
            request_authentication(jwt_rule(ISSUER, jwks=jwks("rsa"))),
            allow(rule(from_=src(requestPrincipals=["*"])), namespace="foo"),
        ),
        [
            ("token", path("/", headers=bearer(token()), **FOO), 200),
            ("no token", path("/", **FOO), 403),
        ],
        ref="§2.1",
    ),
]


@pytest.mark.parametrize("case", params(ORDER_CASES))
async def test_action_order(authz: Launcher, case: Case) -> None:
    """AUDIT marks, DENY denies, an enforced ALLOW must match, else allow."""
    await authz.run(case)


@pytest.mark.parametrize("case", params(DRY_RUN_CASES))
async def test_dry_run(authz: Launcher, case: Case) -> None:
    """Dry-run policies never change the decision, and a dry-run ALLOW is no ALLOW."""
    await authz.run(case)


@pytest.mark.parametrize("case", params(SELECTION_CASES))
async def test_selection(authz: Launcher, case: Case) -> None:
    """Which policies apply to the workload named by the context extensions."""
    await authz.run(case)
