"""What the stages of a Check hand on, and the one place a ``Decision`` is made.

These are made per request, so they are immutable ``NamedTuple``s: as cheap to build as
a plain class (a frozen dataclass costs about twice as much, measured), and read-only.

Every stage (``stages.py``) returns either a ``Denial`` (a final answer) or what it
adds: ``Effects`` (``model.py``: header, query and metadata changes an allowed request
carries) and, from the JWT stage, the ``JwtResult`` with the verified identity. RBAC
ends an allowed request with a ``Verdict``. ``answer`` turns the last of these into the
``Decision``.
"""

from typing import NamedTuple

from services.authz.model import NO_EFFECTS, Decision, Effects, Header, Reason


class Denial(NamedTuple):
    """A final answer: the request is refused with this status, body and headers."""

    status: int
    body: str
    reason: Reason
    headers: tuple[Header, ...] = ()  # to the client
    audit: tuple[str, ...] = ()  # AUDIT policies that matched (RBAC denials)
    dry_run: tuple[str, ...] = ()  # what dry-run policies would have done (RBAC denials)


class Verdict(NamedTuple):
    """RBAC allowed the request: which policy (or default) allowed it, and the notes."""

    reason: Reason
    audit: tuple[str, ...] = ()
    dry_run: tuple[str, ...] = ()


def answer(outcome: Denial | Verdict, effects: Effects = NO_EFFECTS) -> Decision:
    """The Decision for a request that ended with ``outcome``; an allowed one carries
    ``effects`` (a denied one carries only the denial's own headers)."""
    if isinstance(outcome, Denial):
        return Decision(
            False,
            outcome.status,
            outcome.body,
            downstream_headers=outcome.headers,
            reason=outcome.reason,
            audit=outcome.audit,
            dry_run=outcome.dry_run,
        )
    return Decision(
        True,
        upstream_headers=effects.upstream,
        upstream_headers_to_remove=effects.upstream_remove,
        downstream_headers=effects.downstream,
        query_parameters_to_set=effects.query_set,
        query_parameters_to_remove=effects.query_remove,
        dynamic_metadata=effects.metadata,
        reason=outcome.reason,
        audit=outcome.audit,
        dry_run=outcome.dry_run,
    )
