"""Path normalization: Envoy's behaviour for each Istio ``pathNormalization`` mode."""

import pytest

from services.authz.paths import (
    InvalidPathError,
    PathNormalization,
    full_path_with_query,
    request_path,
)

NONE = PathNormalization.NONE
BASE = PathNormalization.BASE
MERGE = PathNormalization.MERGE_SLASHES
DECODE = PathNormalization.DECODE_AND_MERGE_SLASHES
ALL_MODES = (NONE, BASE, MERGE, DECODE)


class TestParse:
    @pytest.mark.parametrize(
        ("text", "mode"),
        [
            ("NONE", NONE),
            ("BASE", BASE),
            ("DEFAULT", BASE),
            ("MERGE_SLASHES", MERGE),
            ("DECODE_AND_MERGE_SLASHES", DECODE),
            ("base", None),
            ("", None),
            ("MERGE", None),
        ],
    )
    def test_mesh_config_names(self, text: str, mode: PathNormalization | None) -> None:
        """meshConfig enum names parse exactly, DEFAULT is BASE, anything else is None."""
        assert PathNormalization.parse(text) is mode


# (raw, {mode: expected}) — one row per bypass attempt, expected per mode.
BYPASS_ATTEMPTS: list[tuple[str, dict[PathNormalization, str]]] = [
    ("//admin", {NONE: "//admin", BASE: "//admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/a//admin", {NONE: "/a//admin", BASE: "/a//admin", MERGE: "/a/admin", DECODE: "/a/admin"}),
    ("/a/../admin", {NONE: "/a/../admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/../admin", {NONE: "/../admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/%2e%2e/admin", {NONE: "/%2e%2e/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/a/%2E./admin", {NONE: "/a/%2E./admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/a/.%2e/admin", {NONE: "/a/.%2e/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/admin%2F", {NONE: "/admin%2F", BASE: "/admin%2F", MERGE: "/admin%2F", DECODE: "/admin/"}),
    ("/admin%2f", {NONE: "/admin%2f", BASE: "/admin%2f", MERGE: "/admin%2f", DECODE: "/admin/"}),
    (
        "/a%2F..%2Fadmin",
        {
            NONE: "/a%2F..%2Fadmin",
            BASE: "/a%2F..%2Fadmin",
            MERGE: "/a%2F..%2Fadmin",
            DECODE: "/admin",
        },
    ),
    ("/%2Fadmin", {NONE: "/%2Fadmin", BASE: "/%2Fadmin", MERGE: "/%2Fadmin", DECODE: "/admin"}),
    (
        "/a%5Cadmin",
        {NONE: "/a%5Cadmin", BASE: "/a%5Cadmin", MERGE: "/a%5Cadmin", DECODE: "/a/admin"},
    ),
    ("/a%5c..%5cadmin", {BASE: "/a%5c..%5cadmin", DECODE: "/admin"}),
    ("/ADMIN", {NONE: "/ADMIN", BASE: "/ADMIN", MERGE: "/ADMIN", DECODE: "/ADMIN"}),
    ("/admin#frag", {NONE: "/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/admin#/../x", {NONE: "/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/admin?x=1", {NONE: "/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/admin?x=/../y#f", {NONE: "/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/a\\admin", {NONE: "/a\\admin", BASE: "/a/admin", MERGE: "/a/admin", DECODE: "/a/admin"}),
    ("/a\\..\\admin", {NONE: "/a\\..\\admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/a/./b", {NONE: "/a/./b", BASE: "/a/b", MERGE: "/a/b", DECODE: "/a/b"}),
    ("/a/.", {NONE: "/a/.", BASE: "/a/", MERGE: "/a/", DECODE: "/a/"}),
    ("/a/..", {NONE: "/a/..", BASE: "/", MERGE: "/", DECODE: "/"}),
    ("/admin.", {NONE: "/admin.", BASE: "/admin.", MERGE: "/admin.", DECODE: "/admin."}),
    ("/admin..", {NONE: "/admin..", BASE: "/admin..", MERGE: "/admin..", DECODE: "/admin.."}),
    ("/a/...", {NONE: "/a/...", BASE: "/a/...", MERGE: "/a/...", DECODE: "/a/..."}),
    ("/a/..x/b", {BASE: "/a/..x/b", DECODE: "/a/..x/b"}),
    ("/%41dmin", {NONE: "/%41dmin", BASE: "/Admin", MERGE: "/Admin", DECODE: "/Admin"}),
    ("/%61dmin", {NONE: "/%61dmin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/a%2Db%5Fc%7Ed%30", {BASE: "/a-b_c~d0"}),
    (
        "/%2561dmin",
        {NONE: "/%2561dmin", BASE: "/%2561dmin", MERGE: "/%2561dmin", DECODE: "/%2561dmin"},
    ),
    ("/%252F", {BASE: "/%252F", DECODE: "/%252F"}),
    ("/a%20b", {NONE: "/a%20b", BASE: "/a%20b", DECODE: "/a%20b"}),
    ("/x/..;y/admin", {NONE: "/x/..;y/admin", BASE: "/admin", MERGE: "/admin", DECODE: "/admin"}),
    ("/x/.;y/admin", {NONE: "/x/.;y/admin", BASE: "/x/admin", DECODE: "/x/admin"}),
    ("/admin;x", {NONE: "/admin;x", BASE: "/admin;x", DECODE: "/admin;x"}),
    ("/", {NONE: "/", BASE: "/", MERGE: "/", DECODE: "/"}),
    ("//", {NONE: "//", BASE: "//", MERGE: "//", DECODE: "//"}),
    ("/%00", {NONE: "/%00"}),
]


def _bypass_cases() -> list[tuple[str, PathNormalization, str]]:
    return [(raw, mode, want) for raw, wants in BYPASS_ATTEMPTS for mode, want in wants.items()]


class TestBypassAttempts:
    @pytest.mark.parametrize(("raw", "mode", "expected"), _bypass_cases())
    def test_normalized_per_mode(self, raw: str, mode: PathNormalization, expected: str) -> None:
        """Each bypass attempt normalizes per mode exactly as Envoy under Istio's settings."""
        assert request_path(raw, mode) == expected

    @pytest.mark.parametrize("mode", [BASE, MERGE, DECODE])
    @pytest.mark.parametrize("raw", ["/%00", "/admin%00", "/a/.%00../b", "/x/AAAAA%%0000/abc"])
    def test_encoded_nul_rejected_when_normalizing(self, raw: str, mode: PathNormalization) -> None:
        """%00 fails canonicalization in every normalizing mode (Envoy answers 400)."""
        with pytest.raises(InvalidPathError, match="NUL"):
            request_path(raw, mode)

    def test_encoded_nul_passes_without_normalization(self) -> None:
        """With NONE, Envoy does not canonicalize, so %00 is forwarded unchanged."""
        assert request_path("/a%00b", NONE) == "/a%00b"

    def test_nul_in_query_is_not_checked(self) -> None:
        """Canonicalization only reads the path part: %00 in the query passes."""
        assert request_path("/a?x=%00", BASE) == "/a"


class TestRejected:
    @pytest.mark.parametrize("mode", ALL_MODES)
    @pytest.mark.parametrize(
        "raw",
        ["", "admin", "\\admin", "*", "%2Fadmin", "?x=1", "#frag", "http://h/admin"],
    )
    def test_path_must_start_with_slash(self, raw: str, mode: PathNormalization) -> None:
        """Envoy refuses a :path not starting with '/' before normalizing (in every mode)."""
        with pytest.raises(InvalidPathError, match="start with"):
            request_path(raw, mode)

    @pytest.mark.parametrize("mode", ALL_MODES)
    @pytest.mark.parametrize("raw", ["/a\x00b", "/a b", "/a\tb", "/a\r\nb", "/a\x7fb", "/a\x1b"])
    def test_raw_controls_and_spaces_rejected(self, raw: str, mode: PathNormalization) -> None:
        """Raw NUL, controls, DEL and spaces never pass Envoy's codecs: rejected in every mode."""
        with pytest.raises(InvalidPathError, match="control character"):
            request_path(raw, mode)

    def test_invalid_path_error_is_a_value_error(self) -> None:
        """InvalidPathError subclasses ValueError, so generic handlers catch it."""
        assert issubclass(InvalidPathError, ValueError)


class TestEnvoyVectors:
    """Vectors from Envoy's test/common/http/path_utility_test.cc (canonicalPath)."""

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/%c0%af", "/%c0%af"),
            ("/%5c%25", "/%5c%25"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/A/B/C", "/A/B/C"),
            ("/a/b/%2e%2e/c", "/a/c"),
            ("/a/%2F%2f/c", "/a/%2F%2f/c"),
            ("/xyz/..;foo=bar/abc", "/abc"),
            ("/..;foo=bar/abc", "/abc"),
            ("/xyz/..;foo=bar", "/"),
            ("/xyz/.;foo=bar/abc", "/xyz/abc"),
            ("/.;foo=bar/abc", "/abc"),
            ("/xyz/.;foo=bar", "/xyz/"),
            ("/xyz/..;foo=bar/.;v1=2,v2=3/abc", "/abc"),
            ("/..;foo=bar/abc/.;mmm", "/abc/"),
            ("/.;aaa/..;foo=bar/abc/.;mmm", "/abc/"),
            ("/xyz/..;foo=bar/.;fff=zzz", "/"),
            ("/xyz/..;foo=bar/.;fff=zzz/remain;blah-bluh?query", "/remain;blah-bluh"),
            ("/xyz/...;foo", "/xyz/...;foo"),
        ],
    )
    def test_canonical_path(self, raw: str, expected: str) -> None:
        """BASE reproduces Envoy's canonicalPath unit-test table."""
        assert request_path(raw, BASE) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("/a//b/c/", "/a/b/c/"),
            ("//a/b/c", "/a/b/c"),
            ("/a/b/c//", "/a/b/c/"),
            ("/a///b/c", "/a/b/c"),
            ("/a////b/c", "/a/b/c"),
        ],
    )
    def test_merge_slashes(self, raw: str, expected: str) -> None:
        """MERGE_SLASHES reproduces Envoy's mergeSlashes unit-test table."""
        assert request_path(raw, MERGE) == expected


class TestIstioVectors:
    """Tables from istio/istio's HCM path-normalization test (MERGE_SLASHES, DECODE...)."""

    TABLE = [
        ("/", "/", "/"),
        ("/app/", "/app/", "/app/"),
        ("/app/../admin", "/admin", "/admin"),
        ("/app", "/app", "/app"),
        ("/app//", "/app/", "/app/"),
        ("/app/%2f", "/app/%2f", "/app/"),
        ("/app%2f/", "/app%2f/", "/app/"),
        ("/xyz%30..//abc", "/xyz0../abc", "/xyz0../abc"),
        ("/app/%2E./admin", "/admin", "/admin"),
        ("/app\\admin", "/app/admin", "/app/admin"),
        ("/app/\\/\\/\\admin", "/app/admin", "/app/admin"),
        ("/%2Fapp%5cadmin%5Cabc", "/%2Fapp%5cadmin%5Cabc", "/app/admin/abc"),
        (
            "/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc",
            "/%5Capp%2f%5c%2F..%2fadmin%5c/abc",
            "/app/admin/abc",
        ),
        ("/app//../admin", "/app/admin", "/app/admin"),
        ("/app//../../admin", "/admin", "/admin"),
        ("/app#foo", "/app", "/app"),
    ]

    @pytest.mark.parametrize(("raw", "merged", "decoded"), TABLE)
    def test_merge_and_decode_tables(self, raw: str, merged: str, decoded: str) -> None:
        """MERGE_SLASHES and DECODE_AND_MERGE_SLASHES match Istio's expectation tables."""
        assert request_path(raw, MERGE) == merged
        assert request_path(raw, DECODE) == decoded


class TestEncoding:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("/%%30%30", "/%2500"),  # decoding must not create a new %00
            ("/%4%31", "/%2541"),  # "%4" + decoded "1" would read as %41
            ("/%%41", "/%A"),
            ("/%zz", "/%zz"),  # invalid escapes pass through
            ("/a%", "/a%"),
            ("/a%4", "/a%4"),
            ("/%2a", "/%2a"),  # reserved: kept, hex case preserved
            ("/%3A%3a", "/%3A%3a"),
            ("/%7e%7E", "/~~"),
        ],
    )
    def test_percent_sequences(self, raw: str, expected: str) -> None:
        """Only unreserved escapes are decoded, once; others stay byte for byte."""
        assert request_path(raw, BASE) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ('/a"b', "/a%22b"),
            ("/a<b>", "/a%3Cb%3E"),
            ("/a^b", "/a%5Eb"),
            ("/a`b", "/a%60b"),
            ("/a{b}", "/a%7Bb%7D"),
            ("/a|b", "/a%7Cb"),
            ("/caf\u00e9", "/caf%C3%A9"),
            ("/\u20ac", "/%E2%82%AC"),
        ],
    )
    def test_raw_characters_escaped(self, raw: str, expected: str) -> None:
        """Characters Chromium's path table escapes are percent-encoded (UTF-8, upper hex)."""
        assert request_path(raw, BASE) == expected

    def test_raw_characters_kept_without_normalization(self) -> None:
        """NONE leaves non-ASCII and other characters alone."""
        assert request_path("/caf\u00e9{x}", NONE) == "/caf\u00e9{x}"

    @pytest.mark.parametrize("raw", ["/a!$&'()*+,;=:@[]-._~b", "/index.html", "/a/b.c/d"])
    def test_plain_paths_unchanged(self, raw: str) -> None:
        """Paths needing no work come back as the very same string (the fast path)."""
        for mode in ALL_MODES:
            assert request_path(raw, mode) is raw


class TestFullPathWithQuery:
    @pytest.mark.parametrize(
        ("raw", "mode", "expected"),
        [
            ("/a/../b?x=/../y", BASE, "/b?x=/../y"),
            ("/a//b?x=//y#frag", MERGE, "/a/b?x=//y"),
            ("/a//b?", MERGE, "/a/b?"),
            ("/a%2Fb?q=%2F", DECODE, "/a/b?q=%2F"),
            ("/a#f?x", BASE, "/a"),
            ("/a/../b?x#f", NONE, "/a/../b?x"),
            ("/plain?x=1", BASE, "/plain?x=1"),
        ],
    )
    def test_query_kept_fragment_dropped(
        self, raw: str, mode: PathNormalization, expected: str
    ) -> None:
        """:path for header conditions: normalized path plus the untouched query."""
        assert full_path_with_query(raw, mode) == expected

    def test_same_rejections(self) -> None:
        """full_path_with_query refuses the same paths as request_path."""
        with pytest.raises(InvalidPathError):
            full_path_with_query("/a%00", BASE)
        with pytest.raises(InvalidPathError):
            full_path_with_query("a", NONE)


class TestIdempotence:
    SAMPLES = [
        "/a/../b",
        "/%%30%30",
        "/%4%31",
        "/a%2F..%2Fb",
        "/x/..;y/z",
        "//a//b//",
        "/a\\b/%2e/c",
        "/caf\u00e9/%7B",
        "/%252F%2f%5c",
        "/a/b/.",
    ]

    @pytest.mark.parametrize("mode", ALL_MODES)
    @pytest.mark.parametrize("raw", SAMPLES)
    def test_normalizing_twice_changes_nothing(self, raw: str, mode: PathNormalization) -> None:
        """Re-normalizing what Envoy forwarded is harmless: the function is idempotent."""
        once = request_path(raw, mode)
        assert request_path(once, mode) == once


class TestPathWithQuery:
    @pytest.mark.parametrize("mode", list(PathNormalization))
    @pytest.mark.parametrize(
        "raw",
        [
            "/a/../b?x=/../y",
            "//a//b?q",
            "/%2e%2e/admin?%2F",
            "/a%2Fb?",
            "/p#frag",
            "/\\a?b#c",
            "/x",
        ],
    )
    def test_path_is_the_query_less_part(self, raw: str, mode: PathNormalization) -> None:
        """The normalized path equals the normalized :path up to its query (the service
        normalizes once and cuts the query off)."""
        assert full_path_with_query(raw, mode).partition("?")[0] == request_path(raw, mode)

    @pytest.mark.parametrize("mode", list(PathNormalization))
    def test_invalid_paths_fail_both_ways(self, mode: PathNormalization) -> None:
        """A path that is invalid without its query is invalid with it too."""
        for function in (full_path_with_query, request_path):
            with pytest.raises(InvalidPathError):
                function("\\a?b#c", mode)
