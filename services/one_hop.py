"""Quota inside Check: the authz service's ``QuotaCounter`` over this process's rate limit
service, answering as Envoy's ratelimit filter answers (its ``x-ratelimit-*`` headers, as
the gateways mixerless configures enable them, and ``x-envoy-ratelimited`` over quota).

The counts are the rate limit service's own (``should_rate_limit``): the same store, keys,
windows, shadow mode and metrics as a ShouldRateLimit call with ``hits_addend`` 1.
"""

from collections.abc import Sequence

from services.authz.model import Header
from services.authz.quota import Entries, QuotaAnswer, QuotaUnavailable
from services.ratelimit.filter_headers import is_rate_limited, response_headers
from services.ratelimit.model import DescriptorRequest, LimitRequest
from services.ratelimit.service import InvalidRequestError, RateLimitService, UnavailableError


class InCheckQuota:
    """Counts a Check's quota descriptors through ``service``."""

    def __init__(self, service: RateLimitService) -> None:
        self._service = service

    async def __call__(self, domain: str, descriptors: Sequence[Entries]) -> QuotaAnswer:
        request = LimitRequest(
            domain, tuple(DescriptorRequest(entries) for entries in descriptors), hits_addend=1
        )
        try:
            result = await self._service.should_rate_limit(request)
        except (UnavailableError, InvalidRequestError) as exc:
            raise QuotaUnavailable(str(exc)) from exc
        # The headers Envoy's filter adds, in its order, on a 200 and a 429 alike.
        headers: tuple[Header, ...] = response_headers(result)
        return QuotaAnswer(is_rate_limited(result), headers)
