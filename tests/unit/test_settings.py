"""Settings: flags win over MIXERLESS_* variables, which win over defaults; bad values fail."""

import argparse

import pytest

from services.settings import SettingsError, add_arguments, build_settings


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
