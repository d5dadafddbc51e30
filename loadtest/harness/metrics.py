"""The counters a driver reads from mixerless's ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import re
from collections import Counter

from harness.processes import http_get

_SAMPLE = re.compile(r"^(mixerless_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def scrape(metrics_url: str | None, service: str = "ratelimit") -> Counter[str]:
    """Counters from ``/metrics``: ``result|<result>`` (of ``service``), ``hits|<outcome>``,
    ``backend_errors``."""
    found: Counter[str] = Counter()
    if metrics_url is None:
        return found
    _, body = http_get(metrics_url, timeout=5.0)
    for line in body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == "mixerless_rpc_requests_total" and f'service="{service}"' in labels:
            result = re.search(r'result="([^"]+)"', labels)
            found[f"result|{result.group(1) if result else '?'}"] += int(float(value))
        elif name == "mixerless_ratelimit_hits_total":
            outcome = re.search(r'outcome="([^"]+)"', labels)
            found[f"hits|{outcome.group(1) if outcome else '?'}"] += int(float(value))
        elif name == "mixerless_backend_errors_total":
            found["backend_errors"] += int(float(value))
    return found
