"""Header values with Envoy command operators (``includeAdditionalHeadersInCheck``).

Envoy runs these values through its header formatter: ``%%`` is a literal ``%`` and
``%OPERATOR%`` is replaced per request. A template is split into literal and operator
parts once, at load; ``render`` only concatenates. Operators mixerless does not know
are rejected at load with the list of those it does.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services.authz.model import CheckInput


def host_port(address: str, port: int) -> str:
    """``host:port`` (IPv6 in brackets); just the host when the port is unknown (0)."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


TEMPLATE_OPERATORS: dict[str, Callable[[CheckInput], str]] = {
    "DOWNSTREAM_REMOTE_ADDRESS": lambda c: host_port(c.source.address, c.source.port),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda c: c.source.address,
    "DOWNSTREAM_REMOTE_PORT": lambda c: str(c.source.port) if c.source.port else "",
    "DOWNSTREAM_LOCAL_ADDRESS": lambda c: host_port(c.destination.address, c.destination.port),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda c: c.destination.address,
    "DOWNSTREAM_LOCAL_PORT": lambda c: str(c.destination.port) if c.destination.port else "",
    "DOWNSTREAM_PEER_URI_SAN": lambda c: c.source.principal,
    "REQUESTED_SERVER_NAME": lambda c: c.sni,
    "PROTOCOL": lambda c: c.request.protocol,
}
"""The Envoy command operators a header value may use, besides ``%REQ(name)%``."""

_OPERATOR = re.compile(r"%([A-Z_]+)(?:\(([^()%]*)\))?%")


@dataclass(frozen=True, slots=True)
class HeaderTemplate:
    """A header value with Envoy command operators, split once into literal and operator parts."""

    text: str
    _parts: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parts", tuple(_split_template(self.text)))

    def render(self, check: CheckInput) -> str:
        """The value for one request."""
        out: list[str] = []
        for kind, value in self._parts:
            if kind == "text":
                out.append(value)
            elif kind == "REQ":
                out.append(check.request.headers.get(value.lower(), ""))
            else:
                out.append(TEMPLATE_OPERATORS[kind](check))
        return "".join(out)


def _split_template(text: str) -> Iterator[tuple[str, str]]:
    """("text", literal) and (operator, argument) parts; ``ValueError`` for what Envoy refuses."""
    literal: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char != "%":
            literal.append(char)
            position += 1
            continue
        if text.startswith("%%", position):
            literal.append("%")
            position += 2
            continue
        found = _OPERATOR.match(text, position)
        if found is None:
            raise ValueError(
                f"'%' at offset {position} does not start an Envoy command operator "
                "(write %% for a literal %)"
            )
        name, argument = found.group(1), found.group(2)
        if name == "REQ" and argument:
            part = ("REQ", argument)
        elif name in TEMPLATE_OPERATORS and argument is None:
            part = (name, "")
        else:
            known = ", ".join(["REQ(header)", *TEMPLATE_OPERATORS])
            raise ValueError(f"unsupported command operator %{found.group(0)[1:-1]}% ({known})")
        if literal:
            yield ("text", "".join(literal))
            literal = []
        yield part
        position = found.end()
    if literal:
        yield ("text", "".join(literal))
