"""The JWT part of a compiled policy set: one ``JwtPlan`` per workload's rule list.

``compile_jwt_plan`` is pure and runs when the policy set compiles; the plan is
immutable and is handed to ``JwtAuthenticator.authenticate`` with each request. It
holds the merged token locations (``TokenExtractor``, whose ``TokenSource`` objects
carry the rules each location accepts and key the verified-token cache), the output
headers a client may not send itself (Envoy ``sanitizeHeaders``: every rule's
``outputPayloadToHeader`` and ``outputClaimToHeaders``, removed even when no token is
present), and the answer for a request without a token.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from services.authz.jwt.result import JwtResult
from services.authz.jwt.rules import JwtRule
from services.authz.jwt.tokens import TokenExtractor


@dataclass(frozen=True, slots=True, eq=False)
class JwtPlan:
    """Per rule list: where tokens are looked for and what a request without one gets."""

    rules: tuple[JwtRule, ...]
    extractor: TokenExtractor
    sanitized: tuple[str, ...]  # output headers of every rule, lower-case, first seen first
    missing: JwtResult  # status "missing", removing ``sanitized``

    @property
    def empty(self) -> bool:
        """No rules: ``authenticate`` answers ``NO_RULES`` without looking at the request."""
        return not self.rules


def compile_jwt_plan(rules: Sequence[JwtRule]) -> JwtPlan:
    """The plan for ``rules`` (in policy order: it decides which equal-issuer rule wins)."""
    frozen = tuple(rules)
    sanitized: dict[str, None] = {}
    for rule in frozen:
        sanitized.update(dict.fromkeys(rule.output_headers))
    names = tuple(sanitized)
    return JwtPlan(
        rules=frozen,
        extractor=TokenExtractor(frozen),
        sanitized=names,
        missing=JwtResult(status="missing", headers_to_remove=names),
    )
