"""Pure decisions: counts in, per-descriptor statuses and the overall code out.

Semantics follow envoyproxy/ratelimit (``base_limiter.go`` and ``ratelimit.go``):

* a counter over its limit after the hit is OVER_LIMIT with 0 remaining, otherwise
  OK with ``limit - count`` remaining; a limit of 0 blocks everything;
* ``shadow_mode`` turns an OVER_LIMIT into OK (remaining stays 0);
* with quota mode, the overall code is OVER_LIMIT only if a non-quota descriptor is
  over, or every quota descriptor is;
* global shadow mode answers OK overall but keeps the per-descriptor codes.
"""

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.ratelimit.match import Match
from services.ratelimit.model import (
    UINT32_MAX,
    Code,
    DescriptorRequest,
    DescriptorStatus,
    LimitRequest,
    RateLimit,
)

NO_LIMIT = DescriptorStatus(Code.OK)
UNLIMITED = DescriptorStatus(Code.OK, remaining=UINT32_MAX)


class Outcome(enum.StrEnum):
    """How a limited descriptor fared, for metrics (envoyproxy/ratelimit's per-rule stats)."""

    WITHIN_LIMIT = "within_limit"
    NEAR_LIMIT = "near_limit"
    OVER_LIMIT = "over_limit"
    OVER_LIMIT_LOCAL_CACHE = "over_limit_with_local_cache"
    SHADOW_MODE = "shadow_mode"


def hits_addend(request: LimitRequest, descriptor: DescriptorRequest) -> int:
    """The descriptor's own addend when set (0 checks without counting), else the request's."""
    if descriptor.hits_addend is not None:
        return descriptor.hits_addend
    return max(1, request.hits_addend)


def drop_replaced(matches: Sequence[Match | None]) -> list[Match | None]:
    """Drop every limit whose name another matched limit ``replaces``."""
    replaced: set[str] = set()
    for match in matches:
        if match is not None:
            replaced |= match.limit.replaces
    if not replaced:
        return list(matches)
    return [
        None if match is not None and match.limit.name and match.limit.name in replaced else match
        for match in matches
    ]


@dataclass(frozen=True, slots=True)
class Judgement:
    status: DescriptorStatus
    outcome: Outcome
    over: bool  # over its limit before shadow mode is applied


def judge(
    limit: RateLimit,
    count: int,
    reset_seconds: int,
    *,
    near_limit_ratio: float,
    from_local_cache: bool = False,
) -> Judgement:
    """The status of one limited descriptor whose counter reads ``count`` after the hit."""
    allowed = limit.requests_per_unit
    if from_local_cache or count > allowed:
        outcome = Outcome.OVER_LIMIT_LOCAL_CACHE if from_local_cache else Outcome.OVER_LIMIT
        if limit.shadow_mode:
            status = DescriptorStatus(Code.OK, limit, 0, reset_seconds)
            return Judgement(status, Outcome.SHADOW_MODE, True)
        return Judgement(DescriptorStatus(Code.OVER_LIMIT, limit, 0, reset_seconds), outcome, True)
    near = count > math.floor(allowed * near_limit_ratio)
    status = DescriptorStatus(Code.OK, limit, allowed - count, reset_seconds)
    return Judgement(status, Outcome.NEAR_LIMIT if near else Outcome.WITHIN_LIMIT, False)


def overall_code(
    statuses: Sequence[DescriptorStatus],
    *,
    quota_mode: bool,
) -> Code:
    """The response's ``overall_code`` from the per-descriptor statuses (before global
    shadow mode, which the caller applies)."""
    over = False
    quota_total = 0
    quota_over = 0
    for status in statuses:
        limit = status.limit
        is_over = status.code is Code.OVER_LIMIT
        if limit is not None and (quota_mode or limit.quota_mode):
            quota_total += 1
            quota_over += is_over
        elif is_over:
            over = True
    if quota_total and quota_over == quota_total:
        over = True
    return Code.OVER_LIMIT if over else Code.OK


def closest_status(
    statuses: Sequence[DescriptorStatus], *, quota_mode: bool
) -> DescriptorStatus | None:
    """The status the ``RateLimit-*`` headers describe: an over non-quota limit, else the
    limited descriptor with the fewest requests remaining (the first one on ties)."""
    best: DescriptorStatus | None = None
    for status in statuses:
        limit = status.limit
        if limit is None:
            continue
        if status.code is Code.OVER_LIMIT and not (quota_mode or limit.quota_mode):
            return status
        if best is None or status.remaining < best.remaining:
            best = status
    return best


def limit_headers(
    status: DescriptorStatus | None, names: tuple[str, str, str]
) -> tuple[tuple[str, str], ...]:
    """``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` for ``status`` (draft-03 fields)."""
    if status is None or status.limit is None:
        return ()
    limit_name, remaining_name, reset_name = names
    return (
        (limit_name, str(status.limit.requests_per_unit)),
        (remaining_name, str(status.remaining)),
        (reset_name, str(status.reset_seconds or 0)),
    )


def dynamic_metadata(request: LimitRequest, matches: Sequence[Match | None]) -> dict[str, Any]:
    """What the response's ``dynamic_metadata`` carries (as envoyproxy/ratelimit shapes it)."""
    descriptors: list[dict[str, Any]] = []
    merged: dict[str, Any] = {}
    for descriptor, match in zip(request.descriptors, matches, strict=True):
        entry: dict[str, Any] = {"entries": [f"{k}={v}" for k, v in descriptor.entries]}
        if descriptor.hits_addend is not None:
            entry["hitsAddend"] = descriptor.hits_addend
        if descriptor.override is not None:
            entry["limit"] = {
                "requestsPerUnit": descriptor.override.requests_per_unit,
                "unit": descriptor.override.unit.name,
            }
        descriptors.append(entry)
        if match is not None:
            merged.update(match.metadata)
    result: dict[str, Any] = {"domain": request.domain, "descriptors": descriptors}
    if request.hits_addend:
        result["hitsAddend"] = request.hits_addend
    if merged:
        result["metadata"] = merged
    return result
