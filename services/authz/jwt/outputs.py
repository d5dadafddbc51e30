"""What a verified token hands on: output header text and the CheckResponse metadata.

* ``claim_header_value``: Envoy's ``outputClaimToHeaders`` text - strings as-is,
  numbers as integers when integral (else ``%f``), booleans as ``true``/``false``,
  objects and lists as standard base64 of their compact JSON; absent, null and empty
  string claims add nothing.
* ``token_metadata``: the ``dynamic_metadata`` of an allowed request - principal,
  issuer, subject, the claims, and ``claim_text``, every top-level claim as a string
  (lists of strings joined with ``,``, other values as sorted compact JSON): Envoy's
  rate limit ``metadata`` action reads only strings, so this is what a quota counted
  by a claim keys on.
"""

import base64
import json
from typing import Any

from services.authz.jwt.verify import VerifiedToken
from services.authz.model import DynamicMetadata


def claim_header_value(payload: dict[str, Any], claim: str) -> str | None:
    """The text Envoy puts in an ``outputClaimToHeaders`` header, None for no header."""
    value: Any = payload
    for part in claim.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, dict | list):
        text = json.dumps(_integral(value), separators=(",", ":"), ensure_ascii=False)
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    return None


def _number_text(value: float) -> str:
    number = float(value)  # claims are protobuf doubles in Envoy
    if number < 0 or number >= 2.0**64 or not number.is_integer():
        return f"{number:f}"  # std::to_string(double)
    return str(int(number))


def _integral(value: Any) -> Any:
    """Integral floats as integers, as protobuf's JSON printer writes doubles."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def token_metadata(token: VerifiedToken) -> DynamicMetadata:
    """The dynamic metadata of a verified token (see the module docstring)."""
    claims = dict(token.claims)
    return DynamicMetadata(
        {
            "principal": token.principal or "",
            "issuer": token.issuer,
            "subject": token.subject or "",
            "claims": claims,
            "claim_text": {name: claim_text(value) for name, value in claims.items()},
        }
    )


def claim_text(value: Any) -> str:
    """One claim as the string a rate limit descriptor can carry."""
    if isinstance(value, str):
        return value
    if type(value) is int:  # what json.dumps writes, without its cost (exp, iat, nbf)
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
