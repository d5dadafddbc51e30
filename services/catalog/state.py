"""The serving policy set, swapped atomically, and who is told when it changes."""

from collections.abc import Callable
from dataclasses import dataclass

from services.catalog.loader import PolicySet

Listener = Callable[[PolicySet], None]


@dataclass(frozen=True, slots=True)
class Rejection:
    """The last policy change that was refused, and why."""

    at: float
    errors: tuple[str, ...]


class PolicyState:
    """Holds the policy set requests are answered with.

    ``current`` is replaced in one assignment, so a request sees either the old or
    the new set, never a mix. A rejected change leaves ``current`` as it was.
    """

    def __init__(self) -> None:
        self.current: PolicySet | None = None
        self.loaded_at: float | None = None
        self.last_rejection: Rejection | None = None
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` on every new policy set (and now, if one is serving)."""
        self._listeners.append(listener)
        if self.current is not None:
            listener(self.current)

    def publish(self, policy_set: PolicySet, at: float) -> None:
        self.current = policy_set
        self.loaded_at = at
        self.last_rejection = None
        for listener in self._listeners:
            listener(policy_set)

    def reject(self, errors: tuple[str, ...], at: float) -> None:
        self.last_rejection = Rejection(at, errors)

    def clear_rejection(self) -> None:
        """The directory is back to the serving set: the last rejection no longer stands."""
        self.last_rejection = None
