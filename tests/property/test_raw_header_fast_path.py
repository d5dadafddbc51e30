"""The raw header map's fast path in the servicer, against a plain reading of the list."""

from hypothesis import given, settings
from hypothesis import strategies as st

from services import envoy_api as api
from services.authz.servicer import _headers

# Few names, so that repeats are common; mixed case too, as a client other than Envoy
# could send them.
_NAMES = st.sampled_from(["a", "x-user", "X-User", "authorization", ":path", "Cookie", "cookie"])
_VALUES = st.text(st.sampled_from([*"ab ,;=é"]), max_size=4)
# Each entry sets value or raw_value (the proto allows one), or neither.
_ENTRIES = st.lists(
    st.tuples(_NAMES, _VALUES, st.sampled_from(["value", "raw", "empty"])), max_size=8
)


def _reference(
    entries: list[tuple[str, str, str]],
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Lower-case names; every value in order; repeated ones joined with ``,`` and kept."""
    values: dict[str, list[str]] = {}
    for name, value, form in entries:
        values.setdefault(name.lower(), []).append("" if form == "empty" else value)
    joined = {name: ",".join(found) for name, found in values.items()}
    return joined, {name: tuple(found) for name, found in values.items() if len(found) > 1}


@settings(max_examples=400, deadline=None, database=None)
@given(_ENTRIES)
def test_raw_header_map_reads_as_the_plain_reading(entries: list[tuple[str, str, str]]) -> None:
    """Header names, joined values and repeated values match the plain reading."""
    http = api.CheckRequest().attributes.request.http
    for name, value, form in entries:
        if form == "value":
            http.header_map.headers.add(key=name, value=value)
        elif form == "raw":
            http.header_map.headers.add(key=name, raw_value=value.encode())
        else:
            http.header_map.headers.add(key=name)
    assert _headers(http) == _reference(entries)
