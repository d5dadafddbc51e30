"""Policy errors carry the file, the line and the field they are about.

Validation never stops at the first problem: every check appends to an
``ErrorSink``, and the loader raises one ``PolicyLoadError`` holding all of them.
"""

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class PolicyError:
    """One problem in one policy file, rendered as ``file:line: field: message``."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class PolicyLoadError(Exception):
    """A policy set was rejected; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors: list[PolicyError] = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class ErrorSink:
    """Collects errors for one file; knows the file's display name."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[PolicyError] = []

    def add(self, line: int, field: str, message: str) -> None:
        self.errors.append(PolicyError(self.file, line, field, message))

    def __bool__(self) -> bool:
        return bool(self.errors)
