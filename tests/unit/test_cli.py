"""``mixerless check``: every error as file:line, a non-zero exit; OK with a summary otherwise."""

from pathlib import Path

import pytest

from services.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ratelimit"


class TestCheck:
    def test_lists_every_error_and_fails(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A misspelled key, a duplicate descriptor and a bad unit: three lines, exit 1."""
        assert main(["check", str(FIXTURES / "invalid")]) == 1
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert [line.split(": ")[0].rsplit("/", 1)[1] for line in lines] == [
            "bad_unit.yaml:5",
            "duplicate_key.yaml:8",
            "misspelled_key.yaml:4",
        ]
        assert "3 errors in 3 file(s)" in err

    def test_valid_directory(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A valid directory exits 0 and names what it compiled."""
        assert main(["check", str(FIXTURES / "upstream")]) == 0
        out = capsys.readouterr().out
        assert "OK (7 file(s), 7 rate limit domain(s), 0 AuthorizationPolicy, " in out

    def test_merge_domains_flag(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--merge-domains lets two files share a domain."""
        for name in ("a", "b"):
            (tmp_path / f"{name}.yaml").write_text(f"domain: d\ndescriptors: [{{key: {name}}}]\n")
        assert main(["check", str(tmp_path)]) == 1
        assert main(["check", str(tmp_path), "--merge-domains"]) == 0
        capsys.readouterr()

    def test_bad_setting_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A malformed setting is a usage error naming the setting, before anything starts."""
        assert main(["serve", "--ratelimit-port", "http"]) == 2
        assert "--ratelimit-port / MIXERLESS_RATELIMIT_PORT" in capsys.readouterr().err
