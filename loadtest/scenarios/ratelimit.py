"""The rate limit scenario: its policy, its ShouldRateLimit requests and how answers read."""

from __future__ import annotations

from services import envoy_api as api

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
DOMAIN = "edge"
OK, OVER_LIMIT = 1, 2
# A RateLimitResponse starts with field 1 (overall_code, varint): 08 01 = OK, 08 02 = OVER_LIMIT.
RESPONSE_OK, RESPONSE_OVER = b"\x08\x01", b"\x08\x02"


def policy_yaml(user_limit: int, tiny_limit: int, counting: str = "exact") -> str:
    """The benchmark policy: every ``user-*`` gets ``user_limit``/min, ``tiny-*`` ``tiny_limit``;
    ``counting: leased`` on every limit unless ``counting`` is exact."""
    extra = "" if counting == "exact" else f"\n      counting: {counting}"
    block = f"""\
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: {user_limit}{extra}
  - key: user
    value: tiny-*
    rate_limit:
      unit: minute
      requests_per_unit: {tiny_limit}{extra}
"""
    nested = "".join("    " + line + "\n" for line in block.splitlines())
    return (
        "# Written by loadtest/rls_load.py: one counter per user, plus one per (product, user).\n"
        f"domain: {DOMAIN}\n"
        "descriptors:\n"
        f"{block}"
        "  - key: generic_key\n"
        "    value: product\n"
        "    descriptors:\n"
        f"{nested}"
    )


def request_bytes(user: str, descriptors: int) -> bytes:
    """A serialized RateLimitRequest touching 1 or 2 counters of ``user``."""
    entries = [api.RateLimitDescriptor(entries=[{"key": "user", "value": user}])]
    if descriptors == 2:
        entries.append(
            api.RateLimitDescriptor(
                entries=[{"key": "generic_key", "value": "product"}, {"key": "user", "value": user}]
            )
        )
    return bytes(api.RateLimitRequest(domain=DOMAIN, descriptors=entries).SerializeToString())


def user_names(users: int, over_share: float, nonce: str) -> list[str]:
    """``users`` names; the first ``over_share`` of them are ``tiny-*`` (tiny limit)."""
    tiny = round(users * over_share)
    if over_share > 0:
        tiny = max(tiny, 1)
    return [
        (f"tiny-{nonce}-{n}" if n < tiny else f"user-{nonce}-{n}") for n in range(max(users, 1))
    ]


def classify_rls_response(response: bytes) -> str | None:
    """``OK`` / ``OVER_LIMIT`` from a serialized RateLimitResponse's first bytes; None otherwise."""
    head = response[:2]
    if head == RESPONSE_OK:
        return "OK"
    if head == RESPONSE_OVER:
        return "OVER_LIMIT"
    return None
