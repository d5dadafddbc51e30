"""Hostile files in a policy directory: each is a rejection naming the file, never a hang,
a crash, a traceback or a huge allocation; the watcher goes on to the next change."""

import gc
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from services.catalog.files import read_policy_file
from services.catalog.loader import LoadOptions, load_directory
from services.catalog.state import PolicyState
from services.catalog.watcher import PolicyWatcher
from services.clock import ManualClock
from services.metrics import Metrics
from services.policy.errors import PolicyLoadError
from services.policy.yamltext import MAX_DEPTH, YamlSyntaxError, parse_documents

GOOD = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
# Eight levels of ten aliases each: 10^8 nodes once expanded, from 8 lines.
_LEVELS = "abcdefgh"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join(['*' + below] * 10)}]\n"
    for below, name in itertools.pairwise(_LEVELS)
)


def errors_of(directory: Path, options: LoadOptions | None = None) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load_directory(directory, options or LoadOptions())
    return [str(error) for error in info.value.errors]


class TestFiles:
    def test_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO named *.yaml is an error naming it; opening it does not wait for a writer."""
        (tmp_path / "a.yaml").write_text(GOOD)
        os.mkfifo(tmp_path / "x.yaml")
        assert errors_of(tmp_path) == [
            f"{tmp_path / 'x.yaml'}:1: policy file refused: it is not a regular file (a FIFO)"
        ]

    def test_symlink_to_a_device_is_refused_unread(self, tmp_path: Path) -> None:
        """A symlink to /dev/zero is refused as a character device, not read forever."""
        os.symlink("/dev/zero", tmp_path / "zero.yaml")
        [error] = errors_of(tmp_path)
        assert error.endswith("policy file refused: it is not a regular file (a character device)")

    def test_file_over_the_cap_is_refused(self, tmp_path: Path) -> None:
        """A file larger than max_file_bytes is refused, naming the cap and its setting."""
        (tmp_path / "big.yaml").write_text(GOOD + "#" * 2000 + "\n")
        [error] = errors_of(tmp_path, LoadOptions(max_file_bytes=1024))
        assert "policy file refused: it is larger than the 1,024-byte cap" in error
        assert "--max-policy-file-bytes" in error
        assert load_directory(tmp_path, LoadOptions(max_file_bytes=4096)).files == ("big.yaml",)

    def test_reading_stops_at_the_cap(self, tmp_path: Path) -> None:
        """At most max_bytes + 1 bytes are read, whatever the file's size claims."""
        path = tmp_path / "a.yaml"
        path.write_bytes(b"x" * 100)
        assert read_policy_file(path, 100) == b"x" * 100
        with pytest.raises(Exception, match="larger than the 99-byte cap"):
            read_policy_file(path, 99)

    def test_symlink_loop_is_an_error(self, tmp_path: Path) -> None:
        """A symlink to itself cannot be opened: an error naming it, not an exception."""
        os.symlink("x.yaml", tmp_path / "x.yaml")
        [error] = errors_of(tmp_path)
        assert error.endswith(
            "policy file refused: it cannot be read: Too many levels of symbolic links"
        )

    def test_dangling_symlink_is_an_error_not_a_swap_in_progress(self, tmp_path: Path) -> None:
        """A symlink to nothing is refused naming its target, instead of being retried
        forever as a directory caught mid-swap."""
        os.symlink("gone.txt", tmp_path / "x.yaml")
        [error] = errors_of(tmp_path)
        assert error.endswith("policy file refused: it is a symlink to a missing file (gone.txt)")


class TestYaml:
    @pytest.mark.parametrize(
        ("literal", "shown"),
        [
            ("9" * 5000, "99999999999999999999...(5000 characters)"),
            ("0x" + "f" * 5000, "0xffffffffffffffffff...(5002 characters)"),
            ("18446744073709551616", "18446744073709551616"),
        ],
    )
    def test_integers_beyond_64_bits_are_errors(self, literal: str, shown: str) -> None:
        """Huge decimal and hex integers are errors naming the line, not ValueError."""
        with pytest.raises(YamlSyntaxError) as info:
            parse_documents(f"a: 1\nb: {literal}\n")
        assert info.value.line == 2
        assert info.value.message == f"integer {shown} is out of range (64 bits at most)"

    def test_the_largest_64_bit_integer_is_accepted(self) -> None:
        """2^64 - 1 still parses (the cap is past every policy field's range)."""
        [doc] = parse_documents("a: 18446744073709551615\n")
        assert doc.body["a"] == 2**64 - 1

    def test_alias_bomb_is_refused_before_it_is_walked(self) -> None:
        """Aliases that expand to millions of nodes are refused, naming the line."""
        with pytest.raises(YamlSyntaxError, match=r"more than 4,194,304 nodes, aliases counted"):
            parse_documents(ALIAS_BOMB)

    def test_recursive_alias_is_an_error(self) -> None:
        """A node that contains an alias of itself is refused."""
        with pytest.raises(YamlSyntaxError, match="an alias refers to a node that contains it"):
            parse_documents("a: &a [1, *a]\n")

    def test_deep_nesting_is_an_error(self) -> None:
        """Nesting past MAX_DEPTH is an error, not a RecursionError."""
        depth = MAX_DEPTH + 1
        with pytest.raises(YamlSyntaxError, match=f"nested more than {MAX_DEPTH} levels deep"):
            parse_documents("a: " + "[" * depth + "]" * depth + "\n")
        parse_documents("a: " + "[" * 50 + "]" * 50 + "\n")

    def test_too_many_documents(self) -> None:
        """More than 10,000 documents in one file is an error at the first one too many."""
        with pytest.raises(YamlSyntaxError, match="more than 10,000 documents in one file"):
            parse_documents("---\na: 1\n" * 10_001)


class TestWatcher:
    @pytest.mark.parametrize(
        "make",
        [
            lambda d: os.mkfifo(d / "x.yaml"),
            lambda d: os.symlink("/dev/zero", d / "x.yaml"),
            lambda d: (d / "x.yaml").write_text("a: " + "9" * 5000 + "\n"),
            lambda d: (d / "x.yaml").write_text(ALIAS_BOMB),
        ],
        ids=["fifo", "dev-zero", "huge-int", "alias-bomb"],
    )
    def test_hostile_file_is_a_rejection_and_the_next_change_loads(
        self, tmp_path: Path, make: object
    ) -> None:
        """The serving set stays, the rejection is counted and kept; removing the file and
        changing a policy loads the change."""
        (tmp_path / "a.yaml").write_text(GOOD)
        state, metrics = PolicyState(), Metrics()
        watcher = PolicyWatcher(tmp_path, LoadOptions(), state, metrics, ManualClock())
        assert watcher.reload()
        good = state.current
        make(tmp_path)  # type: ignore[operator]
        assert watcher.changed()
        assert not watcher.reload()
        assert state.current is good
        assert state.last_rejection is not None
        assert "x.yaml:" in state.last_rejection.errors[0]
        assert metrics.policy_loads.labels("error")._value.get() == 1
        (tmp_path / "x.yaml").unlink()
        (tmp_path / "a.yaml").write_text(
            GOOD.replace("requests_per_unit: 1", "requests_per_unit: 2")
        )
        assert watcher.reload()
        assert state.current is not good and state.last_rejection is None

    def test_an_unexpected_exception_is_a_rejection(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bug that raises while loading is counted and kept as a rejection, its traceback
        logged once; the watcher goes on."""
        (tmp_path / "a.yaml").write_text(GOOD)
        state, metrics = PolicyState(), Metrics()
        watcher = PolicyWatcher(tmp_path, LoadOptions(), state, metrics, ManualClock())
        assert watcher.reload()

        def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr("services.catalog.loader.link", broken)
        (tmp_path / "a.yaml").write_text(GOOD.replace("domain: d", "domain: e"))
        with structlog.testing.capture_logs() as logs:
            assert not watcher.reload()
        [traceback] = [line for line in logs if line["event"] == "policy load failed unexpectedly"]
        assert isinstance(traceback["exc_info"], RuntimeError)
        assert state.last_rejection is not None
        assert state.last_rejection.errors[-1].endswith(
            "the policy set could not be linked: RuntimeError: a bug"
        )
        monkeypatch.undo()
        assert watcher.reload()


def test_check_command_survives_hostile_files(tmp_path: Path) -> None:
    """`mixerless check` on a FIFO, /dev/zero and a huge integer: exit 1, one line per
    file, no traceback, within seconds."""
    os.mkfifo(tmp_path / "fifo.yaml")
    os.symlink("/dev/zero", tmp_path / "zero.yaml")
    (tmp_path / "int.yaml").write_text("a: " + "9" * 5000 + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "services", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert "3 errors in 3 file(s)" in done.stderr


class TestLargeSets:
    def test_loading_pauses_the_cycle_collector_and_restores_it(self, tmp_path: Path) -> None:
        """No collection runs while a directory loads (each would walk the whole heap:
        loading time grew faster than the set), and the collector is on again after,
        also after a rejected load."""
        lines = ["domain: big", "descriptors:"]
        for index in range(2000):
            lines += [f"  - key: user\n    value: u{index}", "    rate_limit: {unit: fortnight}"]
        (tmp_path / "big.yaml").write_text("\n".join(lines) + "\n")  # 2,000 bad limits
        during_load: list[str] = []

        def seen(phase: str, info: dict[str, int]) -> None:
            """A collection that starts while a frame of the loader is on the stack."""
            frame = sys._getframe()
            while frame is not None:
                if frame.f_code.co_name == "_load_directory":
                    during_load.append(phase)
                    return
                frame = frame.f_back  # type: ignore[assignment]

        gc.callbacks.append(seen)
        try:
            assert gc.isenabled()
            assert len(errors_of(tmp_path)) == 2000
            assert during_load == []
            assert gc.isenabled()
            (tmp_path / "big.yaml").write_text(GOOD)
            load_directory(tmp_path, LoadOptions())
            assert during_load == []
            assert gc.isenabled()
        finally:
            gc.callbacks.remove(seen)
