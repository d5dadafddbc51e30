"""How a setting is declared: an ``Option`` (flag, parser, default text, help), the
dataclass-field helpers that attach options to a settings table (``setting``, ``part``,
``optional_part``), and the parsers of plain values (text in, value out, ``ValueError``
with a reason otherwise).

``services/settings.py`` holds the table itself and is the one module that reads the
environment; nothing here does.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

ENV_PREFIX = "MIXERLESS_"

T = TypeVar("T")


# --- value parsers ---------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return port


def parse_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def parse_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


_BYTE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_bytes(text: str) -> int:
    """A size: a whole number of bytes, or of ``KiB``, ``MiB`` or ``GiB``; at least 1."""
    stripped = text.strip()
    digits = stripped.rstrip("BbIiKkMmGg")
    unit = _BYTE_UNITS.get(stripped[len(digits) :].lower())
    if unit is None or not digits.strip().isdigit():
        raise ValueError(f"expected a size such as 4MiB, 512KiB or 1048576, got {text!r}")
    value = int(digits) * unit
    if value < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return value


def parse_ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


def parse_host(text: str) -> str:
    """A listen address; an IPv6 address may come in brackets."""
    return text.strip().strip("[]")


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text.lower()

    return parse


def parse_header_names(text: str) -> tuple[str, str, str]:
    names = [n.strip() for n in text.split(",")]
    if len(names) != 3 or not all(names):
        raise ValueError(f"expected three comma-separated header names, got {text!r}")
    return names[0], names[1], names[2]


# --- declaring options -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: ``--flag`` / ``MIXERLESS_FLAG``, its parser, default text and help."""

    flag: str
    parse: Callable[[str], Any]
    default: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def boolean(self) -> bool:
        """Switched with ``--flag`` / ``--no-flag`` rather than given a value."""
        return self.parse is parse_bool


@dataclass(frozen=True, slots=True)
class Part:
    """Options that land together in one object, by the name of its field they fill.

    With ``unless_empty``, the part is None while that field's value is empty
    (no ``--redis`` URL: no Redis settings at all).
    """

    make: Callable[..., Any]
    options: Mapping[str, Option]
    unless_empty: str | None = None

    def build(self, values: Mapping[str, Any]) -> Any:
        """The object from resolved values (by option ``dest``)."""
        given = {name: values[option.dest] for name, option in self.options.items()}
        if self.unless_empty is not None and not given[self.unless_empty]:
            return None
        return self.make(**given)

    def default(self) -> Any:
        """The object from every option's default text."""
        return self.build({o.dest: o.parse(o.default) for o in self.options.values()})


_OPTION = "mixerless.option"
_PART = "mixerless.part"


def setting(flag: str, parse: Callable[[str], T], default: str, help: str) -> T:
    """A ``Settings`` field filled by one option; its default is ``parse(default)``."""
    option = Option(flag, parse, default, help)
    return field(default=parse(default), metadata={_OPTION: option})


def part(make: Callable[..., T], **options: Option) -> T:
    """A ``Settings`` field holding ``make(**{name: value of option})``."""
    built = Part(make, options)
    declared: T = field(default_factory=built.default, metadata={_PART: built})
    return declared


def optional_part(make: Callable[..., T], unless_empty: str, **options: Option) -> T | None:
    """Like ``part``, but None while the option landing in ``unless_empty`` is empty."""
    built = Part(make, options, unless_empty)
    declared: T | None = field(default_factory=built.default, metadata={_PART: built})
    return declared


def options_of(table: type) -> tuple[Option, ...]:
    """Every option of a settings dataclass, in field order."""
    rows: list[Option] = []
    for declared in fields(table):
        if _OPTION in declared.metadata:
            rows.append(declared.metadata[_OPTION])
        else:
            rows.extend(declared.metadata[_PART].options.values())
    return tuple(rows)


def field_values(table: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Each field of ``table`` from resolved option values (by option ``dest``)."""
    given: dict[str, Any] = {}
    for declared in fields(table):
        if _OPTION in declared.metadata:
            given[declared.name] = values[declared.metadata[_OPTION].dest]
        else:
            given[declared.name] = declared.metadata[_PART].build(values)
    return given
