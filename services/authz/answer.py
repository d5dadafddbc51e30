"""What the stages of a Check hand on, and the one place a ``Decision`` is made.

These are made per request, so they are immutable ``NamedTuple``s: as cheap to build as
a plain class (a frozen dataclass costs about twice as much, measured), and read-only.

Every stage (``stages.py``) returns either a ``Denial`` (a final answer) or what it
adds: ``Effects`` (header, query and metadata changes an allowed request carries) and,
from the JWT stage, the verified identity. RBAC ends an allowed request with a
``Verdict``. ``answer`` turns the last of these into the ``Decision``.
"""

from typing import NamedTuple

from services.authz.model import Decision, DynamicMetadata, Header, Reason


class Effects(NamedTuple):
    """What an allowed request carries: header and query changes, dynamic metadata.

    Accumulated by value, stage after stage (``plus``): later stages' header changes
    follow earlier ones, and their metadata keys win.
    """

    upstream: tuple[Header, ...] = ()  # set on the request to the upstream
    upstream_remove: tuple[str, ...] = ()
    downstream: tuple[Header, ...] = ()  # set on the response to the client
    query_set: tuple[Header, ...] = ()
    query_remove: tuple[str, ...] = ()
    metadata: DynamicMetadata | None = None

    def plus(self, later: "Effects") -> "Effects":
        """These effects followed by ``later``'s."""
        if later is NO_EFFECTS:
            return self
        if self is NO_EFFECTS:
            return later
        metadata = self.metadata
        if later.metadata is not None:
            metadata = later.metadata if metadata is None else metadata.merged(later.metadata)
        return Effects(
            self.upstream + later.upstream,
            self.upstream_remove + later.upstream_remove,
            self.downstream + later.downstream,
            self.query_set + later.query_set,
            self.query_remove + later.query_remove,
            metadata,
        )


NO_EFFECTS = Effects()


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
