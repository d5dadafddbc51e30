"""One Check through the stages, in order, ending in the one ``answer``.

normalize -> CUSTOM -> JWT -> RBAC (AUDIT/DENY/ALLOW + dry-run) -> quota -> answer. A stage's
``Denial`` ends the Check; otherwise what it adds is carried on: the providers' and the
token's ``Effects`` accumulate, the verified identity joins the attributes RBAC reads.
``mixerless explain`` runs this same function with a ``Trace`` to show each stage.
"""

from dataclasses import dataclass

import structlog

from services.authz import decide, stages
from services.authz.answer import Denial, Verdict, answer
from services.authz.jwt.result import JwtResult
from services.authz.mesh_config import MeshSettings
from services.authz.model import NO_EFFECTS, CheckInput, Decision, Effects
from services.authz.plan import WorkloadPlan
from services.authz.quota import QuotaAnswer, QuotaRule
from services.authz.stages import Normalized, Seams

log = structlog.get_logger("mixerless.authz")


@dataclass(slots=True)
class Trace:
    """What each stage of one Check returned (None: the stage was not reached)."""

    plan: WorkloadPlan | None = None
    normalized: Normalized | Denial | None = None
    custom: Effects | Denial | None = None
    jwt: JwtResult | Denial | None = None
    rbac: Verdict | Denial | None = None
    quota: QuotaAnswer | Denial | None = None


async def run(
    mesh: MeshSettings,
    plan: WorkloadPlan,
    check: CheckInput,
    seams: Seams,
    trace: Trace | None = None,
    quotas: tuple[QuotaRule, ...] = (),
) -> Decision:
    """The Decision for ``check``, a request of the workload ``plan`` was compiled for;
    ``quotas`` are the rules of its route, counted only when it is allowed."""
    if trace is not None:
        trace.plan = plan
    normalized = stages.normalize(check, mesh)
    if trace is not None:
        trace.normalized = normalized
    if isinstance(normalized, Denial):
        return answer(normalized)

    effects: Effects | Denial = NO_EFFECTS
    if plan.custom:  # most workloads have no CUSTOM policy: spare them the coroutine
        effects = await stages.custom(plan, normalized, mesh.providers, seams)
    if trace is not None:
        trace.custom = effects
    if isinstance(effects, Denial):
        return answer(effects)

    token = await stages.authenticate(plan, normalized.check.request, seams.jwt)
    if trace is not None:
        trace.jwt = token
    if isinstance(token, Denial):
        return answer(token)
    effects = effects.plus(token.effects)
    attributes = normalized.attributes
    if token.status == "ok":
        attributes.issuer = token.issuer
        attributes.subject = token.subject
        attributes.claims = token.claims

    verdict = decide.rbac(plan, attributes)
    if trace is not None:
        trace.rbac = verdict
    outcome: Verdict | Denial = verdict
    if quotas and isinstance(verdict, Verdict):
        counted = await stages.quota(
            quotas, normalized.check.request, effects, attributes.remote_ip, seams.quota
        )
        if trace is not None:
            trace.quota = counted
        if isinstance(counted, Denial):
            outcome = counted
        elif counted.headers:
            effects = effects.plus(Effects(downstream=counted.headers))
    # Logged after the last stage that may wait: a Check that must move to the event
    # loop runs again from the top there (services/inline.py), and logs once.
    if verdict.audit or verdict.dry_run:
        log.info(
            "policy audit",
            audit=list(verdict.audit),
            dry_run=list(verdict.dry_run),
            decision="allow" if isinstance(verdict, Verdict) else "deny",
            path=attributes.path,
        )
    if isinstance(outcome, Denial):
        return answer(outcome)
    return answer(verdict, effects)
