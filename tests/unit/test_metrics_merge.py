"""Merging the Prometheus expositions of a parent and its workers into one."""

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.metrics import Metrics
from services.metrics_merge import FAMILY_RULES, Merge, merge_expositions, rule_for


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels (parsing it on the way)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def worker(calls: int, digest: str = "d1", loaded_at: float = 100.0) -> Metrics:
    metrics = Metrics()
    rpc = metrics.rpc_recorder("authz", ["ok"])
    for _ in range(calls):
        rpc.observe("ok", 0.00005)
    rpc.observe("ok", 0.003)
    metrics.ratelimit_hits.labels("edge", 'say "hi"\\\n', "over_limit").inc(calls)
    metrics.set_policy(digest, loaded_at)
    return metrics


class TestMerge:
    def test_counters_and_histograms_add_up(self) -> None:
        """Per label set, counter values, bucket counts, counts and sums are summed."""
        merged = samples(merge_expositions([worker(2).exposition(), worker(5).exposition()]))
        ok = (("result", "ok"), ("service", "authz"))
        assert merged[("mixerless_rpc_requests_total", ok)] == 9  # 2 + 1, then 5 + 1 calls
        assert merged[("mixerless_rpc_duration_seconds_count", ok)] == 9
        assert merged[("mixerless_rpc_duration_seconds_bucket", (("le", "0.0001"), *ok))] == 7
        assert merged[("mixerless_rpc_duration_seconds_bucket", (("le", "0.005"), *ok))] == 9
        assert merged[("mixerless_rpc_duration_seconds_sum", ok)] == pytest.approx(
            0.006 + 7 * 0.00005
        )
        hits = (("domain", "edge"), ("outcome", "over_limit"), ("rule", 'say "hi"\\\n'))
        assert merged[("mixerless_ratelimit_hits_total", hits)] == 7  # escapes survive

    def test_per_process_gauges_are_not_summed(self) -> None:
        """Policy info and load time are the max; a reload in progress shows both digests."""
        settled = samples(merge_expositions([worker(1).exposition(), worker(1).exposition()]))
        assert settled[("mixerless_policy_info", (("digest", "d1"),))] == 1
        moving = samples(
            merge_expositions(
                [worker(1).exposition(), worker(1, "d2", loaded_at=160.0).exposition()]
            )
        )
        assert moving[("mixerless_policy_info", (("digest", "d1"),))] == 1
        assert moving[("mixerless_policy_info", (("digest", "d2"),))] == 1
        assert moving[("mixerless_policy_last_load_timestamp_seconds", ())] == 160.0

    def test_gauges_of_things_held_add_up_and_created_is_the_earliest(self) -> None:
        """Streams held by each process add up; a series was created when its first
        process created it."""
        parent, other = Metrics(), Metrics()
        parent.xds_streams.labels("sotw").set(3)
        other.xds_streams.labels("sotw").set(1)
        other.xds_streams.labels("delta").set(2)
        first, second = parent.exposition(), other.exposition()
        created = ("mixerless_ratelimit_unknown_domain_created", ())
        merged = samples(merge_expositions([second, first]))
        assert merged[("mixerless_xds_streams", (("variant", "sotw"),))] == 4
        assert merged[("mixerless_xds_streams", (("variant", "delta"),))] == 2
        assert merged[created] == min(samples(first)[created], samples(second)[created])

    def test_help_and_type_once_per_family(self) -> None:
        """Three expositions, one HELP and one TYPE line for each family."""
        text = merge_expositions([worker(n).exposition() for n in (1, 2, 3)]).decode()
        comments = [line for line in text.splitlines() if line.startswith("#")]
        assert len(comments) == len(set(comments))
        single = worker(1).exposition().decode()
        assert comments == [line for line in single.splitlines() if line.startswith("#")]

    def test_one_exposition_comes_out_unchanged(self) -> None:
        """Merging a single process's exposition changes nothing, byte for byte."""
        text = worker(3).exposition()
        assert merge_expositions([text]) == text
        assert merge_expositions([text.decode()]) == text

    def test_a_series_only_one_process_has_is_kept(self) -> None:
        """A label set seen in one process only is there, with that process's value."""
        a, b = Metrics(), Metrics()
        a.backend_errors.labels("redis").inc(2)
        b.backend_errors.labels("jwks").inc()
        merged = samples(merge_expositions([a.exposition(), b.exposition()]))
        assert merged[("mixerless_backend_errors_total", (("backend", "redis"),))] == 2
        assert merged[("mixerless_backend_errors_total", (("backend", "jwks"),))] == 1

    def test_nothing_to_merge(self) -> None:
        """No exposition, or empty ones: an empty exposition."""
        assert merge_expositions([]) == b""
        assert merge_expositions(["", b""]) == b""

    def test_a_type_conflict_keeps_the_first(self) -> None:
        """A family another exposition types differently keeps the first one's samples."""
        first = "# TYPE thing gauge\nthing 2\n"
        second = "# TYPE thing_total counter\nthing_total 5\n"
        assert samples(merge_expositions([first, second])) == {("thing", ()): 2}

    def test_an_unparsable_exposition_is_named(self) -> None:
        """ValueError says which input does not parse."""
        with pytest.raises(ValueError, match="exposition 1 does not parse"):
            merge_expositions([worker(1).exposition(), "thing{ 1\n"])


class TestRules:
    def test_every_gauge_mixerless_defines_has_a_rule(self) -> None:
        """Adding a gauge to metrics.py means deciding how workers' values merge."""
        gauges = {
            family.name
            for family in Metrics().registry.collect()
            if family.type == "gauge" and not family.name.endswith("_created")
        }
        assert gauges == set(FAMILY_RULES)

    @pytest.mark.parametrize(
        ("name", "kind", "rule"),
        [
            ("mixerless_policy_info", "gauge", Merge.MAX),
            ("mixerless_rpc_requests", "counter", Merge.SUM),
            ("mixerless_rpc_requests_created", "gauge", Merge.MIN),
            ("mixerless_rpc_duration_seconds", "histogram", Merge.SUM),
            ("someone_elses", "gauge", Merge.SUM),
            ("someone_elses", "summary", Merge.FIRST),
            ("someone_elses", "unknown", Merge.FIRST),
            ("someone_elses", "info", Merge.MAX),
        ],
    )
    def test_rules_by_family_then_suffix_then_type(self, name: str, kind: str, rule: Merge) -> None:
        """The family table wins, then the suffix table, then the type's rule."""
        assert rule_for(name, kind) is rule

    def test_first_keeps_the_first_value(self) -> None:
        """Untyped values are not added up: the first process's value stands."""
        merged = merge_expositions(["# TYPE t untyped\nt 3\n", "# TYPE t untyped\nt 4\n"])
        assert samples(merged) == {("t", ()): 3}


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_finds_nothing_the_workers_did_not_have() -> None:
    """``promtool check metrics`` says the same of the merged text as of one worker's."""
    assert PROMTOOL is not None

    def check(text: bytes) -> tuple[int, str]:
        done = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, check=False
        )
        return done.returncode, (done.stdout + done.stderr).decode()

    one = worker(1).exposition()
    merged = merge_expositions([one, worker(4, "d2", 120.0).exposition(), Metrics().exposition()])
    assert check(merged) == check(one)
