"""Path normalization's fast paths, against the full route: the same result for any target."""

from hypothesis import given, settings
from hypothesis import strategies as st

from services.authz import paths
from services.authz.paths import (
    InvalidPathError,
    PathNormalization,
    full_path_with_query,
    request_path,
)

# Characters that steer normalization (dots, slashes, escapes, query, fragment) and
# plain ones, so generated targets hit every branch of the fast paths.
_TARGET_CHARS = st.sampled_from([*"/.?#%;\\2eEfF5cCa~ ", "%2e", "%2F", "..", "//", "é"])
_TARGETS = st.lists(_TARGET_CHARS, max_size=12).map(lambda parts: "/" + "".join(parts))


def _reference(raw: str, mode: PathNormalization) -> tuple[str, str] | None:
    """Both forms of ``raw`` by the full route (check, split, normalize), no fast path."""
    try:
        paths._check(raw)
        path, query = paths._split(raw)
        normalized = paths._normalize(path, mode)
    except InvalidPathError:
        return None
    return normalized, normalized if query is None else f"{normalized}?{query}"


@settings(max_examples=400, deadline=None, database=None)
@given(_TARGETS, st.sampled_from(list(PathNormalization)))
def test_fast_paths_agree_with_full_normalization(raw: str, mode: PathNormalization) -> None:
    """Skipping the canonicalizer for an already-normal path never changes a result."""
    try:
        found: tuple[str, str] | None = (request_path(raw, mode), full_path_with_query(raw, mode))
    except InvalidPathError:
        found = None
    assert found == _reference(raw, mode)
