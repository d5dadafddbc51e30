"""One Prometheus exposition from several processes' (a parent's and its workers').

With ``--workers``, every process has its own registry (``metrics.Metrics``) and the
one HTTP port serves them merged: counters and histograms add up per label set, and
each gauge is merged as its meaning says. How is a table, not code per metric:

| family, suffix or type | merged | why |
|---|---|---|
| ``mixerless_policy_info`` | max | 1 per digest any process serves (two mid-reload) |
| ``mixerless_policy_last_load_timestamp_seconds`` | max | the latest load of any process |
| ``mixerless_xds_streams`` | sum | every process's streams |
| ``*_created`` (a series' creation time) | min | the earliest process's |
| counter, histogram | sum | each process counted its own calls |
| any other gauge | sum | a count of things held now (but list it: below) |
| info, stateset | max | 0 or 1 per label set |
| summary, untyped | first | quantiles do not add up; an untyped value's meaning is unknown |

A new gauge in ``metrics.py`` needs a row in ``FAMILY_RULES`` (a test checks every
gauge has one), so whether it adds up is decided where it is defined.

Parsing is ``prometheus_client.parser``; printing is ``prometheus_client``'s own text
format (``generate_latest``), so HELP and TYPE come out once per family, with the
escaping and the ``_created`` gauges the workers' expositions had. A family is printed
with the HELP and TYPE of the first exposition that has it; one whose type differs in
a later exposition keeps the first one's samples only. Timestamps and exemplars are
dropped (mixerless sets neither).
"""

import enum
import math
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


class Merge(enum.Enum):
    """How the values of one series, one per process, become one value."""

    SUM = "sum"
    MAX = "max"
    MIN = "min"
    FIRST = "first"  # the value of the first exposition that has the series


FAMILY_RULES: Mapping[str, Merge] = {
    "mixerless_policy_info": Merge.MAX,
    "mixerless_policy_last_load_timestamp_seconds": Merge.MAX,
    "mixerless_xds_streams": Merge.SUM,
}
"""By family name (as the parser names it: a counter without ``_total``)."""

SUFFIX_RULES: Mapping[str, Merge] = {"_created": Merge.MIN}
"""By the end of the family name, when no family rule applies."""

TYPE_RULES: Mapping[str, Merge] = {
    "counter": Merge.SUM,
    "histogram": Merge.SUM,
    "gaugehistogram": Merge.SUM,
    "gauge": Merge.SUM,
    "info": Merge.MAX,
    "stateset": Merge.MAX,
    "summary": Merge.FIRST,
    "unknown": Merge.FIRST,
}
"""By the family's type, when neither a family nor a suffix rule applies."""


def rule_for(name: str, kind: str) -> Merge:
    """How samples of family ``name`` of type ``kind`` are merged (the tables above)."""
    found = FAMILY_RULES.get(name)
    if found is not None:
        return found
    for suffix, rule in SUFFIX_RULES.items():
        if name.endswith(suffix):
            return rule
    return TYPE_RULES.get(kind, Merge.FIRST)


_SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


class _Family:
    """One family being merged: its first HELP and TYPE, and each series' value."""

    def __init__(self, name: str, documentation: str, kind: str, unit: str) -> None:
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.unit = unit
        self.rule = rule_for(name, kind)
        self.values: dict[_SeriesKey, float] = {}  # insertion order: first seen first

    def add(self, key: _SeriesKey, value: float) -> None:
        known = self.values.get(key)
        if known is None:
            self.values[key] = value
        elif self.rule is Merge.SUM:
            self.values[key] = known + value
        elif self.rule is Merge.MAX:
            self.values[key] = value if math.isnan(known) else max(known, value)
        elif self.rule is Merge.MIN:
            self.values[key] = value if math.isnan(known) else min(known, value)

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind, self.unit)
        for (sample, labels), value in self.values.items():
            metric.add_sample(sample, dict(labels), value)
        return metric


class _Merged(Collector):
    """The merged families, as a collector ``generate_latest`` can print."""

    def __init__(self, families: Iterable[_Family]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.metric()


def merge_expositions(texts: Iterable[str | bytes]) -> bytes:
    """One exposition (Prometheus text format 0.0.4) from several, merged per the rules.

    ``ValueError`` names the input (by position) that does not parse.
    """
    families: dict[str, _Family] = {}
    for position, text in enumerate(texts):
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise ValueError(f"exposition {position} does not parse: {exc}") from exc
        for parsed_family in parsed:
            family = families.get(parsed_family.name)
            if family is None:
                family = _Family(
                    parsed_family.name,
                    parsed_family.documentation,
                    parsed_family.type,
                    parsed_family.unit,
                )
                families[family.name] = family
            elif family.kind != parsed_family.type:
                continue  # another version's idea of this family: the first one stands
            for sample in parsed_family.samples:
                family.add((sample.name, tuple(sorted(sample.labels.items()))), sample.value)
    return generate_latest(_Merged(families.values()))
