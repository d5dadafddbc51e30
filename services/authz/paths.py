"""Request path normalization, as Envoy's connection manager does it before any filter runs.

Istio configures the HTTP connection manager from ``meshConfig.pathNormalization``
(``pilot/pkg/networking/core`` HCM builder):

=========================  ==============  =============  ====================================
mode                       normalize_path  merge_slashes  path_with_escaped_slashes_action
=========================  ==============  =============  ====================================
NONE                       false           false          KEEP_UNCHANGED
BASE (= DEFAULT)           true            false          KEEP_UNCHANGED
MERGE_SLASHES              true            true           KEEP_UNCHANGED
DECODE_AND_MERGE_SLASHES   true            true           UNESCAPE_AND_FORWARD
=========================  ==============  =============  ====================================

Envoy then applies, in this order (``ConnectionManagerImpl`` and
``ConnectionManagerUtility::maybeNormalizePath``):

1. A ``:path`` that is empty or does not start with ``/`` is refused (Envoy answers 404,
   "absolute_path_rejected", before normalizing). The HTTP codecs have already refused raw
   NUL, CR, LF, other control characters and spaces in the request target.
2. The fragment (``#...``) is stripped. Envoy's own default is to reject it, but Istio's
   bootstrap sets ``http_reject_path_with_fragment=false`` (CVE-2021-39156), so it is stripped.
3. DECODE_AND_MERGE_SLASHES only: ``%2F``/``%2f`` become ``/`` and ``%5C``/``%5c`` become
   ``\\`` (plain text replacement, before anything else, so ``/a%2F..%2Fb`` later loses its
   dot segment).
4. normalize_path (every mode but NONE), on the part before ``?``:

   * ``/.;params`` and ``/..;params`` segments lose their parameters (Envoy runtime guard
     ``strip_dotdot_segments_with_parameters``, on by default since its 2026 advisory);
   * RFC 3986 canonicalization with Chromium's URL library: ``.``/``..`` segments are
     resolved (``%2e``/``%2E`` count as dots; ``..`` above the root stays at the root);
     ``\\`` becomes ``/``; a percent-encoded *unreserved* character (ALPHA, DIGIT, ``-``,
     ``.``, ``_``, ``~``) is decoded, once, in the same single left-to-right pass; every
     other valid escape is kept byte for byte (hex case preserved, so ``%2f`` stays ``%2f``
     and ``%25`` stays ``%25``: no double decoding); an invalid escape (``%zz``, a lone
     ``%``) is kept as is, and if decoding a later escape would make it look valid the
     ``%`` is re-encoded as ``%25``; ``%00`` fails the request (400); the characters
     ``space " < > ^ ` { | }``, DEL, controls and every non-ASCII byte are percent-encoded
     (upper-case hex, UTF-8 bytes).
5. merge_slashes: runs of ``/`` collapse to one (on the normalized path; Envoy keeps a
   leading and a trailing slash, so ``//`` alone stays ``//``).

NONE only strips the fragment: ``%00``, ``..``, ``//`` and ``\\`` all pass unchanged, as
they do through Envoy with ``normalize_path: false``.

Envoy sends ext_authz the ``:path`` after all this, so normalizing again here is
idempotent for what Envoy forwards; it matters when the server is reached by a client that
did not go through that Envoy, and it makes the policy engine independent of the proxy's
settings. ``paths`` conditions match :func:`request_path` (no query); ``request.headers[:path]``
matches :func:`full_path_with_query` (query kept, as Envoy's RBAC sees the header).

Sources read: envoyproxy/envoy ``source/common/http/path_utility.cc`` (``canonicalPath``,
``mergeSlashes``, ``unescapeSlashes``, ``stripParametersFromDotSegments``),
``source/common/http/conn_manager_utility.cc`` (``maybeNormalizePath``),
``source/common/http/conn_manager_impl.cc`` (relative-path check),
``source/common/chromium_url/url_canon_path.cc`` and the googleurl snapshot Envoy pins (the
same pre-2024 path character table), ``test/common/http/path_utility_test.cc`` (vectors
reused in the tests); istio/istio HCM builder and its normalization test tables.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "InvalidPathError",
    "PathNormalization",
    "full_path_with_query",
    "request_path",
]


class InvalidPathError(ValueError):
    """The request path is one Envoy would refuse; the service answers HTTP 400."""


class PathNormalization(enum.Enum):
    """``meshConfig.pathNormalization.normalization``."""

    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"

    @classmethod
    def parse(cls, text: str) -> PathNormalization | None:
        """The mode for a meshConfig enum name (``DEFAULT`` is ``BASE``); None if unknown.

        Names are matched exactly, as the protobuf enum parser does.
        """
        if text == "DEFAULT":
            return cls.BASE
        try:
            return cls(text)
        except ValueError:
            return None


_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")
# Characters the canonicalizer percent-encodes when they appear raw ("ESCAPE" in the
# Chromium path table), besides controls, DEL and non-ASCII. '#' and '?' cannot reach it.
_ESCAPED_RAW = frozenset(' "<>^`{|}')

# A path made only of these characters (and no "/." or, when merging, "//") needs no work.
_FAST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]*")
# What the codecs refuse in a request target: controls, space, DEL.
_REFUSED = re.compile(r"[\x00-\x20\x7f]")
_ESCAPED_SLASHES = ("%2F", "%2f", "%5C", "%5c")
_MERGING = frozenset({PathNormalization.MERGE_SLASHES, PathNormalization.DECODE_AND_MERGE_SLASHES})


def request_path(raw: str, mode: PathNormalization = PathNormalization.BASE) -> str:
    """The path ``paths`` conditions match: query and fragment removed, then normalized.

    Raises InvalidPathError for a path Envoy refuses (see the module docstring).
    """
    if _is_plain(raw, mode):
        return raw
    _check(raw)
    path, _query = _split(raw)
    return path if _is_plain(path, mode) else _normalize(path, mode)


def full_path_with_query(raw: str, mode: PathNormalization = PathNormalization.BASE) -> str:
    """The ``:path`` header as Envoy's RBAC sees it: normalized path, query kept verbatim.

    The fragment is removed; an empty query keeps its ``?`` (``/a?`` stays ``/a?``).
    """
    if _is_plain(raw, mode):
        return raw
    _check(raw)
    path, query = _split(raw)
    if _is_plain(path, mode):  # most paths with a query: nothing to do but drop a fragment
        return path if query is None else raw[: len(path) + 1 + len(query)]
    normalized = _normalize(path, mode)
    return normalized if query is None else f"{normalized}?{query}"


def _check(raw: str) -> None:
    if not raw.startswith("/"):
        raise InvalidPathError("path must start with '/'")
    if _REFUSED.search(raw) is not None:
        raise InvalidPathError("path contains a control character or a space")


def _is_plain(raw: str, mode: PathNormalization) -> bool:
    """True when ``raw`` is valid and already normal (``_normalize`` would return it as
    it is, in every mode): the per-request fast path."""
    return (
        raw[:1] == "/"
        and _FAST.fullmatch(raw) is not None
        and "/." not in raw
        and ("//" not in raw or mode not in _MERGING)
    )


def _split(raw: str) -> tuple[str, str | None]:
    """(path, query or None) with the fragment dropped; Envoy strips ``#`` first."""
    hash_at = raw.find("#")
    if hash_at >= 0:
        raw = raw[:hash_at]
    path, sep, query = raw.partition("?")
    return path, (query if sep else None)


def _normalize(path: str, mode: PathNormalization) -> str:
    if mode is PathNormalization.NONE:
        return path
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES and "%" in path:
        for escaped in _ESCAPED_SLASHES:
            if escaped in path:
                path = path.replace(escaped, "/" if escaped[1] == "2" else "\\")
    if ".;" in path:
        path = _strip_dot_segment_parameters(path)
    path = _canonicalize(path)
    if mode is not PathNormalization.BASE and "//" in path:
        path = _merge_slashes(path)
    return path


def _strip_dot_segment_parameters(path: str) -> str:
    """``/..;x`` → ``/..`` and ``/.;x`` → ``/.`` (literal dots only, ``/`` separators only)."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment.startswith("..;"):
            segments[index] = ".."
        elif segment.startswith(".;"):
            segments[index] = "."
    return "/".join(segments)


def _merge_slashes(path: str) -> str:
    inner = "/".join(part for part in path.split("/") if part)
    return ("/" if path.startswith("/") else "") + inner + ("/" if path.endswith("/") else "")


def _dot_length(path: str, index: int) -> int:
    """3 for ``%2e``/``%2E``, 1 for ``.``, else 0."""
    char = path[index]
    if char == ".":
        return 1
    if char == "%" and path[index + 1 : index + 3] in ("2e", "2E"):
        return 3
    return 0


def _is_escape(text: str, index: int) -> bool:
    """``text[index:index+3]`` is ``%`` and two hex digits."""
    return (
        index + 2 < len(text)
        and text[index] == "%"
        and text[index + 1] in _HEX
        and text[index + 2] in _HEX
    )


def _escape_raw(char: str) -> str:
    try:
        data = char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidPathError("path is not valid UTF-8") from exc
    return "".join(f"%{byte:02X}" for byte in data)


def _canonicalize(path: str) -> str:
    """Chromium/Envoy path canonicalization of a path starting with ``/``; see module doc.

    ``out`` holds one output character per item, like Chromium's output buffer, so the
    nested-escape repair below can reason in characters.
    """
    out: list[str] = []
    end = len(path)
    last_bad_percent = -10  # index in ``out`` of the latest '%' that did not start an escape
    i = 0
    while i < end:
        char = path[i]
        dot = _dot_length(path, i)
        if dot:
            if out and out[-1] == "/":
                after = i + dot
                if after == end:
                    break  # "/." at the end: current directory
                if path[after] in "/\\":
                    i = after + 1  # "/./": current directory, the slash is already out
                    continue
                second = _dot_length(path, after)
                if second:
                    after_second = after + second
                    if after_second == end or path[after_second] in "/\\":
                        _back_up(out)
                        i = after_second + 1
                        continue
            out.append(".")
            i += dot
            continue
        if char == "\\":
            out.append("/")
        elif char == "%":
            if _is_escape(path, i):
                value = int(path[i + 1 : i + 3], 16)
                if value == 0:
                    raise InvalidPathError("path contains an encoded NUL (%00)")
                decoded = chr(value)
                if decoded in _UNRESERVED:
                    out.append(decoded)
                    if last_bad_percent >= len(out) - 3:
                        _fix_nested_escape(out, last_bad_percent, path, i + 3)
                else:
                    out.extend(path[i : i + 3])
                i += 3
                continue
            last_bad_percent = len(out)
            out.append("%")
        elif char in _ESCAPED_RAW or char >= "\x7f":
            out.extend(_escape_raw(char))
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _back_up(out: list[str]) -> None:
    """``..``: drop the last segment of ``out`` (which ends with ``/``), never the root."""
    cut = len(out) - 2
    while cut > 0 and out[cut] != "/":
        cut -= 1
    del out[max(cut, 0) + 1 :]


def _fix_nested_escape(out: list[str], bad: int, path: str, next_index: int) -> None:
    """Re-encode an earlier invalid ``%`` that decoding just turned into a valid escape.

    ``out[bad]`` is a ``%`` that did not start an escape in the input, and ``out[-1]`` was
    just decoded. If ``%`` plus the next two output characters (borrowing the next input
    character when only one follows) now read as an escape, the ``%`` becomes ``%25`` so
    the output cannot be decoded into something else later: ``%%30%30`` → ``%2500``.
    """
    borrowed = False
    if bad == len(out) - 2:
        if next_index >= len(path) or path[next_index] >= "\x80":
            return
        out.append(path[next_index])
        borrowed = True
    if out[bad + 1] in _HEX and out[bad + 2] in _HEX:
        first, second = out[bad + 1], out[bad + 2]
        del out[bad + 1 :]
        out.extend(("2", "5", first))
        if not borrowed:
            out.append(second)  # a borrowed character is processed again on the next step
    elif borrowed:
        out.pop()
