"""A Gateway route's ``directResponse``: Envoy answers by itself, no backend involved.

The shape is Istio's ``HTTPRoute.directResponse`` (VirtualService, networking v1alpha3):

```yaml
directResponse:
  status: 503                          # required, 200-599 (Istio's and Envoy's range)
  body: {string: "down for maintenance"}   # optional; or {bytes: <standard base64>}
```

A body is at most ``MAX_BODY_BYTES``, Envoy's default
``RouteConfiguration.max_direct_response_body_size_bytes``: Envoy would refuse the
whole route configuration with a larger one.

ext_authz applies to such a route as to any other, and so do the quotas counted inside the
Check (one hop). Envoy's own rate limiting cannot (``NOT_RATE_LIMITED``): its ratelimit
filter sends no descriptors for a route without a RouteAction, whether the actions are on
the virtual host, the filter or ``RateLimitPerRoute.rate_limits`` (measured with Envoy
1.40; ``tests/e2e/test_gateway_direct_response.py`` keeps checking).
"""

import base64
import binascii
from dataclasses import dataclass

from services.policy.fields import Fields

MAX_BODY_BYTES = 4096
NOT_RATE_LIMITED = (
    "Envoy does not rate limit a directResponse route "
    "(its ratelimit filter sends no descriptors for a route without a backend)"
)
BODY_KINDS = ("string", "bytes")


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str | bytes | None = None  # str: body.string, bytes: body.bytes (decoded)


def _body(body: Fields) -> str | bytes | None:
    kinds = [kind for kind in BODY_KINDS if kind in body]
    if len(kinds) != 1:
        body.missing("string", "body takes exactly one of string or bytes")
        return None
    if kinds[0] == "string":
        text = body.text("string", required=True)
        size = len(text.encode("utf-8"))
        found: str | bytes = text
    else:
        encoded = body.text("bytes", required=True)
        try:
            found = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            body.error("bytes", f"must be standard base64 (RFC 4648, padded): {exc}")
            return None
        size = len(found)
    if size > MAX_BODY_BYTES:
        body.error(
            kinds[0],
            f"body is {size} bytes, more than Envoy's limit of {MAX_BODY_BYTES} "
            "for a direct response (max_direct_response_body_size_bytes)",
        )
        return None
    return found


def read_direct_response(route: Fields) -> DirectResponse | None:
    """The route's ``directResponse``, or None when it has none; errors go to the sink."""
    fields = route.child("directResponse", what="directResponse", allowed={"status", "body"})
    if fields is None or not fields.valid:
        return None
    status = fields.integer("status", required=True, minimum=200, maximum=599)
    body = None
    found = fields.child("body", what="body", allowed=set(BODY_KINDS))
    if found is not None and found.valid:
        body = _body(found)
    return DirectResponse(status, body)
