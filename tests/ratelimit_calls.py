"""Policies and requests shared by the service, integration and end-to-end tiers."""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services import envoy_api as api

POLICY = """\
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: user
    value: vip
    rate_limit: {unit: minute, requests_per_unit: 1000}
"""


def write_policy(directory: Path, text: str, name: str = "edge.yaml") -> None:
    """Replace a policy file atomically (write aside, then rename over it)."""
    temporary = directory / f".{name}.tmp"
    temporary.write_text(text)
    os.replace(temporary, directory / name)


def make_request(domain: str, *descriptors: Sequence[tuple[str, str]]) -> Any:
    message = api.RateLimitRequest(domain=domain)
    for entries in descriptors:
        descriptor = message.descriptors.add()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
    return message
