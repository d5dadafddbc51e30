"""Bodies that are not the protobuf message a gRPC method expects, as a hostile client sends
them: each must be INVALID_ARGUMENT for that call only."""

from services import envoy_api as api


def _varint(number: int) -> bytes:
    out = b""
    while True:
        low, number = number & 0x7F, number >> 7
        if not number:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field on the wire."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _check_request() -> bytes:
    request = api.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/public"
    return bytes(request.SerializeToString())


def _nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct holding a Struct ... ``depth`` levels down."""
    struct = b""
    for _ in range(depth):
        value = _field(5, struct)  # Value.struct_value
        struct = _field(1, _field(1, b"a") + _field(2, value))  # Struct.fields entry
    return struct


def check_bodies() -> dict[str, bytes]:
    """Undecodable CheckRequests: invalid UTF-8 in a string, truncated, nested too deep."""
    valid = _check_request()
    metadata = _field(1, _field(1, b"x") + _field(2, _nested_struct(200)))  # filter_metadata
    return {
        "invalid-utf8": valid.replace(b"GET", b"\xffET"),
        "truncated": valid[:-2],
        "too-deep": valid + _field(1, _field(11, metadata)),  # attributes.metadata_context
        "garbage": b"\xff\xff\xff\xff not protobuf",
    }


def rate_limit_bodies() -> dict[str, bytes]:
    """Undecodable RateLimitRequests: invalid UTF-8 in the domain, truncated, garbage."""
    request = api.RateLimitRequest(domain="edge")
    request.descriptors.add().entries.add(key="user", value="alice")
    valid = bytes(request.SerializeToString())
    return {
        "invalid-utf8": valid.replace(b"edge", b"\xffdge"),
        "truncated": valid[:-2],
        "garbage": b"\xff\xff\xff\xff not protobuf",
    }
