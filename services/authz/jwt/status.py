"""jwt_verify_lib's status strings (``src/status.cc`` ``getStatusString``) and the error
that carries one. Envoy sends the string as the body of a 401 (403 for audiences).
"""

JWT_MISSED = "Jwt is missing"
JWT_NOT_YET_VALID = "Jwt not yet valid"
JWT_EXPIRED = "Jwt is expired"
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
JWT_HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
JWT_HEADER_BAD_JSON = "Jwt header is an invalid JSON"
JWT_HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
JWT_HEADER_NOT_IMPLEMENTED_ALG = "Jwt header [alg] is not supported"
JWT_HEADER_BAD_KID = "Jwt header [kid] field is not a string"
JWT_PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
JWT_PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
JWT_PAYLOAD_ISS_NOT_STRING = "Jwt payload [iss] field is not a string"
JWT_PAYLOAD_SUB_NOT_STRING = "Jwt payload [sub] field is not a string"
JWT_PAYLOAD_IAT_NOT_INTEGER = "Jwt payload [iat] field is not an integer"
JWT_PAYLOAD_IAT_OUT_OF_RANGE = "Jwt payload [iat] field is not a positive 64 bit integer"
JWT_PAYLOAD_NBF_NOT_INTEGER = "Jwt payload [nbf] field is not an integer"
JWT_PAYLOAD_NBF_OUT_OF_RANGE = "Jwt payload [nbf] field is not a positive 64 bit integer"
JWT_PAYLOAD_EXP_NOT_INTEGER = "Jwt payload [exp] field is not an integer"
JWT_PAYLOAD_EXP_OUT_OF_RANGE = "Jwt payload [exp] field is not a positive 64 bit integer"
JWT_PAYLOAD_JTI_NOT_STRING = "Jwt payload [jti] field is not a string"
JWT_PAYLOAD_AUD_NOT_STRING = "Jwt payload [aud] field is not a string or string list"
JWT_SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
JWT_ED25519_SIGNATURE_WRONG_LENGTH = "Jwt ED25519 signature is wrong length"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"
JWT_AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
JWT_VERIFICATION_FAIL = "Jwt verification fails"
JWKS_PARSE_ERROR = "Jwks is an invalid JSON"
JWKS_NO_KEYS = "Jwks does not have [keys] field"
JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"
JWKS_KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAIL = "Jwks remote fetch is failed"
JWKS_RSA_PARSE_ERROR = "Jwks RSA [n] or [e] field is missing or has a parse error"
JWKS_EC_X_OR_Y_BAD_BASE64 = "Jwks EC [x] or [y] field is an invalid Base64."
JWKS_EC_PARSE_ERROR = "Jwks EC [x] and [y] fields have a parse error."
JWKS_OCT_BAD_BASE64 = "Jwks Oct key is an invalid Base64"
JWKS_OKP_X_BAD_BASE64 = "Jwks OKP [x] field is an invalid Base64."
JWKS_OKP_X_WRONG_LENGTH = "Jwks OKP [x] field is wrong length."
JWKS_MISSING_KTY = "[kty] is missing in [keys]"
JWKS_BAD_KTY = "[kty] is bad in [keys]"
JWKS_NOT_IMPLEMENTED_KTY = "[kty] is not supported in [keys]"
JWKS_RSA_KEY_BAD_ALG = "[alg] is not started with [RS] or [PS] for an RSA key"
JWKS_RSA_KEY_MISSING_N = "[n] field is missing for a RSA key"
JWKS_RSA_KEY_BAD_N = "[n] field is not string for a RSA key"
JWKS_RSA_KEY_MISSING_E = "[e] field is missing for a RSA key"
JWKS_RSA_KEY_BAD_E = "[e] field is not string for a RSA key"
JWKS_EC_KEY_BAD_ALG = "[alg] is not started with [ES] for an EC key"
JWKS_EC_KEY_BAD_CRV = "[crv] field is not string for an EC key"
JWKS_EC_KEY_ALG_OR_CRV_UNSUPPORTED = "[crv] or [alg] field is not supported for an EC key"
JWKS_EC_KEY_ALG_NOT_COMPATIBLE_WITH_CRV = (
    "[crv] field specified is not compatible with [alg] for an EC key"
)
JWKS_EC_KEY_MISSING_X = "[x] field is missing for an EC key"
JWKS_EC_KEY_BAD_X = "[x] field is not string for an EC key"
JWKS_EC_KEY_MISSING_Y = "[y] field is missing for an EC key"
JWKS_EC_KEY_BAD_Y = "[y] field is not string for an EC key"
JWKS_HMAC_KEY_BAD_ALG = "[alg] does not start with [HS] for an HMAC key"
JWKS_HMAC_KEY_MISSING_K = "[k] field is missing for an HMAC key"
JWKS_HMAC_KEY_BAD_K = "[k] field is not string for an HMAC key"
JWKS_OKP_KEY_BAD_ALG = "[alg] is not [EdDSA] for an OKP key"
JWKS_OKP_KEY_MISSING_CRV = "[crv] field is missing for an OKP key"
JWKS_OKP_KEY_BAD_CRV = "[crv] field is not string for an OKP key"
JWKS_OKP_KEY_CRV_UNSUPPORTED = "[crv] field is not supported for an OKP key"
JWKS_OKP_KEY_MISSING_X = "[x] field is missing for an OKP key"
JWKS_OKP_KEY_BAD_X = "[x] field is not string for an OKP key"
JWKS_X509_PARSE_ERROR = "X509 parse pubkey fails"
JWKS_X509_GET_PUBKEY_ERROR = "X509 parse pubkey internal fails: get pubkey"
JWKS_PEM_NOT_IMPLEMENTED_KTY = "PEM Key type is not supported"
JWKS_PEM_BAD_BASE64 = "PEM pubkey parse fails"

CLOCK_SKEW_SECONDS = 60  # kClockSkewInSecond; Istio never sets clock_skew_seconds
DEFAULT_SPACE_DELIMITED_CLAIMS = ("scope", "permission")  # Istio's normalize_payload_in_metadata

SUPPORTED_ALGS = frozenset(
    {"ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"}
    | {"PS256", "PS384", "PS512", "EdDSA"}
)

_UINT64_LIMIT = float(2**64)
_X509_PREFIX = "-----BEGIN CERTIFICATE-----\n"
_X509_SUFFIX = "\n-----END CERTIFICATE-----\n"


class JwtVerifyError(Exception):
    """A token failed a check; ``status`` is jwt_verify_lib's string for it."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail

    @property
    def http_status(self) -> int:
        """403 for a bad audience, 401 for everything else (Envoy ``Filter::onComplete``)."""
        return 403 if self.status == JWT_AUDIENCE_NOT_ALLOWED else 401
