"""The compiled form of one RequestAuthentication ``jwtRule``.

The policy loader builds these from YAML; everything in this package only reads them.
A rule is immutable, compared and hashed by value (every configured field, ``source``
included), and carries what is derived from it once: its sanitized audiences.
"""

from dataclasses import dataclass, field

from services.authz.jwt.verify import audience_checker

DEFAULT_HEADER = ("authorization", "Bearer ")
"""Envoy's default token location when a rule names none: ``Authorization: Bearer <token>``."""

DEFAULT_PARAM = "access_token"
"""Envoy's default query parameter when a rule names no location."""


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One ``jwtRule``: who issues the token, where it is found, what is done with it."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # inline JWKS (JSON text; PEM accepted too)
    jwks_uri: str | None = None  # when neither is set, OIDC discovery on the issuer
    from_headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value prefix)
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (header, claim path "a.b")
    timeout: float = 5.0  # JWKS fetch timeout, seconds
    space_delimited_claims: tuple[str, ...] = ()  # in addition to "scope" and "permission"
    source: str = ""  # "namespace/name#jwtRules[0]", for logs only
    allowed_audiences: frozenset[str] = field(init=False, repr=False, compare=False)
    """``audiences`` sanitized as ``check_audience.cc`` does; empty allows any."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_audiences", audience_checker(self.audiences))

    @property
    def default_locations(self) -> bool:
        """True when the rule names no location: then ``Authorization: Bearer`` and
        ``?access_token=`` are used."""
        return not (self.from_headers or self.from_params or self.from_cookies)

    @property
    def header_locations(self) -> tuple[tuple[str, str], ...]:
        """The (lower-case header name, prefix) pairs this rule reads, defaults included."""
        if self.default_locations:
            return (DEFAULT_HEADER,)
        return tuple((name.lower(), prefix) for name, prefix in self.from_headers)

    @property
    def param_locations(self) -> tuple[str, ...]:
        """The query parameters this rule reads, defaults included."""
        if self.default_locations:
            return (DEFAULT_PARAM,)
        return self.from_params

    @property
    def output_headers(self) -> tuple[str, ...]:
        """Every header this rule may write (payload and claims), lower-case."""
        names = [name.lower() for name, _ in self.output_claim_to_headers]
        if self.output_payload_to_header:
            names.insert(0, self.output_payload_to_header.lower())
        return tuple(names)
