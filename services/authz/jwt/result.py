"""What the JWT step answers (``JwtResult``) and Envoy's ``www-authenticate`` challenge.

**Applying a result to an ext_authz response:** Envoy applies ``headers_to_remove``
*after* the added headers, so ``headers_to_remove`` never names a header that
``headers_to_add`` sets; send ``headers_to_add`` with ``OVERWRITE_IF_EXISTS_OR_ADD`` so
they replace client copies. ``headers_to_remove`` also matters for ``status="missing"``;
``effects`` holds them as the pipeline applies them. ``metadata`` (set when
``status="ok"``) is the CheckResponse's ``dynamic_metadata`` for the token; it is one
object per verified token, shared by every request that presents it, so hand it on as it
is.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from services.authz.jwt.status import JWT_MISSED
from services.authz.jwt.verify import VerifiedToken
from services.authz.model import NO_EFFECTS, DynamicMetadata, Effects, Header, HttpRequest

JwtStatus = Literal["none", "missing", "ok", "invalid"]

MAX_REALM_PATH = 256  # filter.cc MaximumUriLength


@dataclass(frozen=True, slots=True)
class JwtResult:
    """The outcome of the JWT step; see the module docstring for how to apply it."""

    status: JwtStatus
    principal: str | None = None  # iss/sub of the first verified token (when it has a sub)
    issuer: str | None = None
    subject: str | None = None
    claims: dict[str, Any] | None = None  # verified payload, space-delimited claims split
    headers_to_add: tuple[Header, ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    query_params_to_remove: tuple[str, ...] = ()
    http_status: int = 0  # 401 or 403 when invalid
    body: str = ""  # the jwt_verify_lib status string when invalid
    response_headers: tuple[Header, ...] = ()  # www-authenticate when invalid
    tokens: tuple[VerifiedToken, ...] = ()  # every verified token, extraction order
    detail: str = ""  # where it failed, for logs
    metadata: DynamicMetadata | None = None  # the first token's, when ok (see outputs.py)
    # What an allowed request carries from this step: made here, once per result (and
    # results are cached per token), not per request.
    effects: Effects = field(init=False, default=NO_EFFECTS, compare=False)

    def __post_init__(self) -> None:
        if self.status == "ok":
            effects = Effects(
                upstream=self.headers_to_add,
                upstream_remove=self.headers_to_remove,
                query_remove=self.query_params_to_remove,
                metadata=self.metadata,
            )
        elif self.status == "missing" and self.headers_to_remove:
            # Output headers a client sent itself are removed whether or not it sent a
            # token, so the upstream can trust them (Envoy's jwt_authn does the same).
            effects = Effects(upstream_remove=self.headers_to_remove)
        else:
            return
        object.__setattr__(self, "effects", effects)

    @property
    def www_authenticate(self) -> str | None:
        for name, value in self.response_headers:
            if name == "www-authenticate":
                return value
        return None


NO_RULES = JwtResult(status="none")


def www_authenticate(request: HttpRequest, status: str) -> str:
    """Envoy's challenge: ``Bearer realm="<scheme>://<host><path[:256]>"`` plus
    ``, error="invalid_token"`` unless the token was missing."""
    path = request.path
    fragment = path.find("#")
    if fragment >= 0:
        path = path[:fragment]
    value = f'Bearer realm="{request.scheme}://{request.host}{path[:MAX_REALM_PATH]}"'
    if status != JWT_MISSED:
        value += ', error="invalid_token"'
    return value
