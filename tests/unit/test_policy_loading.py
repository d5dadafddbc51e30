"""Reading policy directories: line numbers, strict YAML, file selection, content hashes."""

import os
from pathlib import Path

import pytest

from services.catalog.files import is_policy_file
from services.catalog.loader import LoadOptions, load_directory
from services.catalog.state import PolicyState
from services.catalog.watcher import PolicyWatcher
from services.clock import ManualClock
from services.metrics import Metrics
from services.policy.errors import PolicyLoadError
from services.policy.yamltext import LineMap, YamlSyntaxError, parse_documents

GOOD = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class TestYamlText:
    def test_keys_remember_their_lines(self) -> None:
        """Every mapping knows the line of each of its keys."""
        [doc] = parse_documents("a: 1\nb:\n  c: 2\n")
        assert isinstance(doc.body, LineMap)
        assert doc.body.line_of("b") == 2
        assert doc.body["b"].line_of("c") == 3

    def test_multi_document_files(self) -> None:
        """Each document of a multi-document file is returned with its first line."""
        docs = parse_documents("a: 1\n---\nb: 2\n---\n")
        assert [(d.index, d.line) for d in docs] == [(0, 1), (1, 3)]

    def test_duplicate_keys_are_errors(self) -> None:
        """A key repeated in one mapping is an error, not a silent overwrite."""
        with pytest.raises(YamlSyntaxError, match="duplicate key 'a'") as info:
            parse_documents("a: 1\nb: 2\na: 3\n")
        assert info.value.line == 3

    def test_syntax_error_names_the_line(self) -> None:
        """Invalid YAML reports the line of the problem."""
        with pytest.raises(YamlSyntaxError) as info:
            parse_documents("a: 1\nb: [1, 2\n")
        assert info.value.line >= 2


class TestDirectory:
    def test_selects_yaml_and_skips_hidden_and_temp_files(self, tmp_path: Path) -> None:
        """Only *.yaml/*.yml are read; dotfiles, ..data dirs and editor leftovers are not."""
        write(tmp_path / "a.yaml", GOOD)
        write(tmp_path / "nested" / "b.yml", GOOD.replace("domain: d", "domain: e"))
        write(tmp_path / ".hidden.yaml", "broken: [")
        write(tmp_path / "..2024_01" / "c.yaml", "broken: [")
        write(tmp_path / "README.md", "# notes")
        policy_set = load_directory(tmp_path, LoadOptions())
        assert policy_set.files == ("a.yaml", "nested/b.yml")
        assert not is_policy_file("a.yaml~") and not is_policy_file(".a.yaml.swp")
        assert not is_policy_file("#a.yaml#")

    def test_digest_is_content_hash(self, tmp_path: Path) -> None:
        """The digest changes with content and is the same for the same content."""
        write(tmp_path / "a.yaml", GOOD)
        first = load_directory(tmp_path, LoadOptions()).digest
        assert load_directory(tmp_path, LoadOptions()).digest == first
        write(tmp_path / "a.yaml", GOOD.replace("1}", "2}"))
        assert load_directory(tmp_path, LoadOptions()).digest != first

    def test_all_errors_from_all_files(self, tmp_path: Path) -> None:
        """Errors from several files are reported together, each with its file."""
        write(tmp_path / "a.yaml", "domain: d\ndescriptors: [{key: k, rate_limit: {unit: x}}]\n")
        write(tmp_path / "b.yaml", "not: [valid\n")
        write(tmp_path / "c.yaml", "just: a mapping\n")
        write(tmp_path / "d.yaml", "apiVersion: v1\nkind: Mystery\n")
        with pytest.raises(PolicyLoadError) as info:
            load_directory(tmp_path, LoadOptions())
        files = sorted(Path(e.file).name for e in info.value.errors)
        assert files == ["a.yaml", "b.yaml", "c.yaml", "d.yaml"]
        text = str(info.value)
        assert "invalid YAML" in text and "unsupported document kind 'Mystery'" in text
        assert "unrecognised document" in text

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A directory that does not exist is an error, not an empty policy set."""
        with pytest.raises(PolicyLoadError, match="does not exist"):
            load_directory(tmp_path / "nope", LoadOptions())

    def test_upstream_error_fixtures_all_reported(self) -> None:
        """A misspelled key, a duplicate descriptor and an invalid unit are all reported."""
        fixtures = Path(__file__).parent.parent / "fixtures" / "ratelimit" / "invalid"
        with pytest.raises(PolicyLoadError) as info:
            load_directory(fixtures, LoadOptions())
        lines = [str(e).split(f"{fixtures}/")[1] for e in info.value.errors]
        assert lines == [
            "bad_unit.yaml:5: descriptors[0].rate_limit.unit: invalid rate limit unit 'foo' "
            "(expected one of: second, minute, hour, day, week, month, year)",
            "duplicate_key.yaml:8: descriptors[1].key: duplicate descriptor composite key "
            "'duplicates.key1_value1' (already defined at line 3)",
            "misspelled_key.yaml:4: descriptors[0].ratelimit: unknown key 'ratelimit' in "
            "descriptor (expected one of: descriptors, detailed_metric, key, metadata, "
            "quota_mode, rate_limit, shadow_mode, share_threshold, value, value_to_metric)",
        ]


class TestWatcher:
    def make(self, directory: Path) -> tuple[PolicyWatcher, PolicyState, Metrics]:
        state, metrics = PolicyState(), Metrics()
        watcher = PolicyWatcher(directory, LoadOptions(), state, metrics, ManualClock())
        return watcher, state, metrics

    def test_bad_change_keeps_the_good_policy(self, tmp_path: Path) -> None:
        """A rejected change leaves the serving set in place and records why."""
        write(tmp_path / "a.yaml", GOOD)
        watcher, state, metrics = self.make(tmp_path)
        assert watcher.reload()
        good = state.current
        write(tmp_path / "a.yaml", GOOD.replace("second", "fortnight"))
        assert watcher.changed()
        assert not watcher.reload()
        assert state.current is good
        assert state.last_rejection is not None
        assert "fortnight" in state.last_rejection.errors[0]
        assert metrics.policy_loads.labels("error")._value.get() == 1

    def test_symlink_swap_is_seen(self, tmp_path: Path) -> None:
        """Swapping a ..data-style symlink to a new directory triggers a reload."""
        write(tmp_path / "v1" / "a.yaml", GOOD)
        write(tmp_path / "v2" / "a.yaml", GOOD.replace("domain: d", "domain: e"))
        mount = tmp_path / "mount"
        mount.mkdir()
        os.symlink(tmp_path / "v1", mount / "..data")
        os.symlink("..data/a.yaml", mount / "a.yaml")
        watcher, state, _ = self.make(mount)
        assert watcher.reload()
        assert state.current is not None and set(state.current.ratelimit.domains) == {"d"}
        os.symlink(tmp_path / "v2", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        assert watcher.changed()
        assert watcher.reload()
        assert set(state.current.ratelimit.domains) == {"e"}

    def test_directory_created_later_is_loaded(self, tmp_path: Path) -> None:
        """A policy directory that appears (even empty) after start-up is loaded."""
        directory = tmp_path / "later"
        watcher, state, _ = self.make(directory)
        assert not watcher.reload()
        directory.mkdir()
        assert watcher.changed()
        assert watcher.reload()
        assert state.current is not None and state.current.files == ()

    def test_reverting_a_bad_change_clears_the_rejection(self, tmp_path: Path) -> None:
        """Putting back the serving content clears the reported rejection."""
        write(tmp_path / "a.yaml", GOOD)
        watcher, state, _ = self.make(tmp_path)
        watcher.reload()
        write(tmp_path / "a.yaml", "domain: d\ndescriptors: 7\n")
        watcher.reload()
        assert state.last_rejection is not None
        write(tmp_path / "a.yaml", GOOD)
        watcher.reload()
        assert state.last_rejection is None

    def test_symlink_loop_is_cut(self, tmp_path: Path) -> None:
        """A symlink back to a parent directory is read once, not recursed forever."""
        write(tmp_path / "a.yaml", GOOD)
        os.symlink(tmp_path, tmp_path / "loop")
        policy_set = load_directory(tmp_path, LoadOptions())
        assert policy_set.files == ("a.yaml",)

    def test_unchanged_content_is_not_a_new_load(self, tmp_path: Path) -> None:
        """Touching a file without changing content does not republish."""
        write(tmp_path / "a.yaml", GOOD)
        watcher, _, _ = self.make(tmp_path)
        assert watcher.reload()
        write(tmp_path / "a.yaml", GOOD)
        assert not watcher.reload()
