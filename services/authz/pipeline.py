"""One Check through the stages, in order, ending in the one ``answer``.

normalize -> CUSTOM -> JWT -> RBAC (AUDIT/DENY/ALLOW + dry-run) -> quota -> answer. A stage's
``Denial`` ends the Check; otherwise what it adds is carried on: the providers' and the
token's ``Effects`` accumulate, the verified identity joins the attributes RBAC reads.
``mixerless explain`` runs this same function with a ``Trace`` to show each stage.

``run`` is ``evaluate`` (up to RBAC: what the decision cache keeps, ``Evaluated``) then
``finish`` (the quota, counted on every request, and the audit log line).
"""

from dataclasses import dataclass, replace
from typing import NamedTuple

import structlog

from services.authz import decide, stages
from services.authz.answer import Denial, Verdict, answer
from services.authz.jwt.result import JwtResult
from services.authz.mesh_config import MeshSettings
from services.authz.model import NO_EFFECTS, CheckInput, Decision, Effects, Encoded, Header
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


class Evaluated(NamedTuple):
    """A Check up to RBAC: what a request's policy-read attributes decide, with no
    quota counted yet. The decision cache keeps these (``service.py``)."""

    decision: Decision  # the answer when no quota is counted
    rbac: Verdict | Denial | None  # RBAC's outcome (None: an earlier stage ended the Check)
    effects: Effects  # what an allowed request carries so far (providers, token)
    token: JwtResult | Denial | None  # the JWT step's result (None: not reached)


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
    evaluated, normalized = await evaluate(mesh, plan, check, seams, trace)
    return await finish(mesh, evaluated, check, seams, trace, quotas, normalized)


async def evaluate(
    mesh: MeshSettings,
    plan: WorkloadPlan,
    check: CheckInput,
    seams: Seams,
    trace: Trace | None = None,
) -> tuple[Evaluated, Normalized | None]:
    """The stages up to RBAC; with the request as normalized (None when refused there)."""
    if trace is not None:
        trace.plan = plan
    normalized = stages.normalize(check, mesh)
    if trace is not None:
        trace.normalized = normalized
    if isinstance(normalized, Denial):
        return Evaluated(answer(normalized), None, NO_EFFECTS, None), None

    effects: Effects | Denial = NO_EFFECTS
    if plan.custom:  # most workloads have no CUSTOM policy: spare them the coroutine
        effects = await stages.custom(plan, normalized, mesh.providers, seams)
    if trace is not None:
        trace.custom = effects
    if isinstance(effects, Denial):
        return Evaluated(answer(effects), None, NO_EFFECTS, None), normalized

    token = await stages.authenticate(plan, normalized.check.request, seams.jwt)
    if trace is not None:
        trace.jwt = token
    if isinstance(token, Denial):
        return Evaluated(answer(token), None, NO_EFFECTS, token), normalized
    effects = effects.plus(token.effects)
    attributes = normalized.attributes
    if token.status == "ok":
        attributes.issuer = token.issuer
        attributes.subject = token.subject
        attributes.claims = token.claims

    verdict = decide.rbac(plan, attributes)
    if trace is not None:
        trace.rbac = verdict
    return Evaluated(answer(verdict, effects), verdict, effects, token), normalized


async def finish(
    mesh: MeshSettings,
    evaluated: Evaluated,
    check: CheckInput,
    seams: Seams,
    trace: Trace | None = None,
    quotas: tuple[QuotaRule, ...] = (),
    normalized: Normalized | None = None,
) -> Decision:
    """Count an allowed request's ``quotas`` and log its audit notes; the Decision.

    ``normalized`` is the request as ``evaluate`` normalized it; a cached ``evaluated``
    comes without it, and only what a quota reads is taken again (``quota_view``).
    """
    verdict = evaluated.rbac
    if verdict is None:
        return evaluated.decision
    decision = evaluated.decision
    if quotas and isinstance(verdict, Verdict):
        if normalized is not None:
            seen = normalized.check.request, normalized.attributes.remote_ip
        else:
            found = stages.quota_view(check, mesh)
            if isinstance(found, Denial):  # cannot happen for a request RBAC allowed
                return answer(found)
            seen = found
        counted = await stages.quota(quotas, seen[0], evaluated.effects, seen[1], seams.quota)
        if trace is not None:
            trace.quota = counted
        if isinstance(counted, Denial):
            decision = answer(counted)
        elif counted.headers:
            decision = _with_headers(decision, counted.headers)
    # Logged after the last stage that may wait: a Check that must move to the event
    # loop runs again from the top there (services/inline.py), and logs once.
    if verdict.audit or verdict.dry_run:
        log.info(
            "policy audit",
            audit=list(verdict.audit),
            dry_run=list(verdict.dry_run),
            decision="allow" if isinstance(verdict, Verdict) else "deny",
            path=(
                normalized.attributes.path
                if normalized is not None
                else check.request.path.partition("?")[0]
            ),
        )
    return decision


def _with_headers(decision: Decision, headers: tuple[Header, ...]) -> Decision:
    """``decision`` with ``headers`` added to the client's response, after its own."""
    return replace(
        decision,
        downstream_headers=decision.downstream_headers + headers,
        base=decision,
        appended=headers,
        encoded=Encoded(),
    )
