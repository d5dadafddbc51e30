"""Settings: flags win over MIXERLESS_* variables, which win over defaults; bad values fail."""

import argparse
from pathlib import Path

import pytest

from services.authz.plan import WorkloadDefaults
from services.catalog.loader import LoadOptions
from services.grpc_server import ServerOptions
from services.ratelimit.service import RateLimitOptions
from services.settings import (
    GATEWAY_OPTIONS,
    OPTIONS,
    Settings,
    SettingsError,
    add_arguments,
    build_settings,
    resolve,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


class TestPrecedence:
    def test_defaults(self) -> None:
        """With nothing given, the documented defaults apply (memory counters, port 8081)."""
        settings = build_settings(parse(), environ={})
        assert settings.ratelimit_port == 8081 and settings.http_port == 8080
        assert settings.redis is None
        assert settings.services == frozenset({"ratelimit", "authz", "xds"})
        assert settings.authz_port == 9001

    def test_env_overrides_default(self) -> None:
        """A MIXERLESS_* variable replaces the default."""
        settings = build_settings(parse(), environ={"MIXERLESS_RATELIMIT_PORT": "9999"})
        assert settings.ratelimit_port == 9999

    def test_flag_overrides_env(self) -> None:
        """A flag wins over the variable."""
        env = {"MIXERLESS_RATELIMIT_PORT": "9999", "MIXERLESS_SHADOW_MODE": "true"}
        settings = build_settings(parse("--ratelimit-port", "7000", "--no-shadow-mode"), env)
        assert settings.ratelimit_port == 7000
        assert settings.ratelimit.shadow_mode is False

    def test_redis_settings(self) -> None:
        """A Redis URL selects shared counters, with its timeouts parsed as durations."""
        settings = build_settings(
            parse("--redis", "redis+cluster://h1:7000,h2:7001", "--redis-timeout", "250ms"), {}
        )
        assert settings.redis is not None
        assert settings.redis.timeout == 0.25 and settings.redis.connect_timeout == 1.0


class TestErrors:
    @pytest.mark.parametrize(
        ("argv", "env", "named"),
        [
            ((), {"MIXERLESS_RATELIMIT_PORT": "eighty"}, "MIXERLESS_RATELIMIT_PORT"),
            (("--http-port", "70000"), {}, "--http-port"),
            (("--redis-timeout", "soon"), {}, "--redis-timeout"),
            (("--redis", "http://x"), {}, "--redis"),
            (("--redis", "redis+sentinel://h:26379"), {}, "--redis"),
            (("--redis", "redis://h:6379/?ssl_ca_certs=/x"), {}, "--redis"),
            (("--only", "mixer"), {}, "--only"),
            ((), {"MIXERLESS_SHADOW_MODE": "maybe"}, "MIXERLESS_SHADOW_MODE"),
            (("--near-limit-ratio", "2"), {}, "--near-limit-ratio"),
        ],
    )
    def test_malformed_value_names_the_setting(
        self, argv: tuple[str, ...], env: dict[str, str], named: str
    ) -> None:
        """A malformed value stops start-up with an error naming the flag or variable."""
        with pytest.raises(SettingsError, match=named):
            build_settings(parse(*argv), env)

    def test_all_bad_settings_reported_together(self) -> None:
        """Every malformed setting is listed, not just the first."""
        env = {"MIXERLESS_HTTP_PORT": "x", "MIXERLESS_LOG_LEVEL": "loud"}
        with pytest.raises(SettingsError) as info:
            build_settings(parse(), env)
        assert "MIXERLESS_HTTP_PORT" in str(info.value)
        assert "MIXERLESS_LOG_LEVEL" in str(info.value)


class TestTable:
    def test_settings_defaults_are_the_tables(self) -> None:
        """``Settings()`` (as tests build it) equals what serve resolves with nothing given."""
        assert Settings() == build_settings(parse(), environ={})

    def test_parts_agree_with_their_owners_defaults(self) -> None:
        """Each part's table defaults match the defaults its owning module declares."""
        settings = Settings()
        assert settings.ratelimit == RateLimitOptions()
        assert settings.server == ServerOptions()
        assert settings.workload == WorkloadDefaults()
        assert settings.load == LoadOptions()

    def test_option_lands_in_its_part(self) -> None:
        """An option of a part fills that part's field; the Redis part exists only with a URL."""
        env = {"MIXERLESS_HOST": "[::1]", "MIXERLESS_EXPIRATION_JITTER": "7"}
        settings = build_settings(parse("--redis", "redis://h:6379"), env)
        assert settings.server.host == "::1"
        assert settings.redis is not None and settings.redis.expiration_jitter == 7
        assert build_settings(parse(), env).redis is None

    def test_only_resolves_the_named_options(self) -> None:
        """``resolve(only=...)`` reads just the subcommand's options, by dest."""
        values = resolve(parse("--xds-port", "1"), {}, GATEWAY_OPTIONS)
        assert set(values) == {flag.replace("-", "_") for flag in GATEWAY_OPTIONS}
        assert values["xds_port"] == 1

    def test_help_lists_every_option_with_variable_and_default(self) -> None:
        """``--help`` names each flag, its MIXERLESS_* variable and its default text."""
        parser = argparse.ArgumentParser(  # one line per option: no wrapping at hyphens
            formatter_class=lambda prog: argparse.HelpFormatter(prog, width=500)
        )
        add_arguments(parser)
        text = parser.format_help()
        for option in OPTIONS:
            assert f"--{option.flag}" in text
            assert f"env {option.env}, default {option.default!r}" in text

    def test_operations_doc_lists_the_table(self) -> None:
        """docs/operations.md's settings table has every flag, variable and default, in order."""
        doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
        section = doc.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
        rows = [
            [cell.strip() for cell in line.strip("|").split("|")[:3]]
            for line in section.splitlines()
            if line.startswith("| `--")
        ]
        expected = [
            [
                f"`--{o.flag}` / `--no-{o.flag}`" if o.boolean else f"`--{o.flag}`",
                f"`{o.env}`",
                f"`{o.default}`" if o.default else "(empty)",
            ]
            for o in OPTIONS
        ]
        assert rows == expected
