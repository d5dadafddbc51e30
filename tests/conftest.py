"""Shared test plumbing: a clean environment, proof that required tiers really ran, and
the number of workers end-to-end tests run ``mixerless serve`` with (``--serve-workers``)."""

from collections import Counter

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-marker",
        action="append",
        default=[],
        metavar="MARKER",
        help="fail the session unless tests with this marker ran and none was skipped",
    )
    parser.addoption(
        "--serve-workers",
        type=int,
        default=1,
        metavar="N",
        help="run every `mixerless serve` the end-to-end tests start with --workers N "
        "(default 1: one process); tests about workers choose their own",
    )


_passed: Counter[str] = Counter()
_not_passed: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for marker in ("redis", "envoy"):
        if marker not in report.keywords:
            continue
        if report.when == "call" and report.passed:
            _passed[marker] += 1
        elif report.skipped:
            _not_passed[marker] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    problems = []
    for marker in session.config.getoption("--require-marker"):
        if _not_passed[marker]:
            problems.append(f"{_not_passed[marker]} '{marker}' test(s) were skipped")
        elif not _passed[marker]:
            problems.append(f"no '{marker}' test ran (they are required here)")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("required test tiers missing: " + "; ".join(problems), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MIXERLESS_* variable from the developer's shell leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("MIXERLESS_"):
            monkeypatch.delenv(name)
