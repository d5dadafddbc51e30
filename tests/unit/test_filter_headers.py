"""The headers and replies of Envoy's ratelimit filter, computed from a ``LimitResult``.

Expected values follow envoyproxy/envoy's ratelimit_headers.cc and ratelimit.cc, and
were checked against a real Envoy 1.40 fed the same answers through ``response_to_proto``.
"""

import pytest

from services.authz.quota import RATE_LIMITED_STATUS, STORE_FAILURE_HEADERS, STORE_FAILURE_STATUS
from services.ratelimit.filter_headers import (
    X_ENVOY_RATELIMITED_HEADER,
    current_limit,
    is_rate_limited,
    response_headers,
    window_seconds,
    x_ratelimit_headers,
)
from services.ratelimit.limiter import NO_LIMIT, UNLIMITED
from services.ratelimit.model import (
    Code,
    DescriptorStatus,
    LimitResult,
    RateLimit,
    Unit,
)

OK, OVER = Code.OK, Code.OVER_LIMIT
PER_MINUTE = RateLimit(10, Unit.MINUTE)


def result(
    *statuses: DescriptorStatus, overall: Code = OK, headers: tuple[tuple[str, str], ...] = ()
) -> LimitResult:
    return LimitResult(overall, statuses, headers)


def as_dict(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(headers)


class TestXRateLimitHeaders:
    def test_one_descriptor_within_limit(self) -> None:
        """One limited status gives limit with its own policy, remaining and reset."""
        headers = x_ratelimit_headers(result(DescriptorStatus(OK, PER_MINUTE, 7, 42)))

        assert headers == (
            ("x-ratelimit-limit", "10, 10;w=60"),
            ("x-ratelimit-remaining", "7"),
            ("x-ratelimit-reset", "42"),
        )

    def test_fewest_remaining_wins_and_policy_lists_every_limit(self) -> None:
        """The status with the fewest remaining is reported; the policy lists all, in order."""
        headers = x_ratelimit_headers(
            result(
                DescriptorStatus(OK, RateLimit(10, Unit.MINUTE, name="per-user"), 7, 40),
                DescriptorStatus(OK, RateLimit(100, Unit.HOUR), 3, 3000),
                DescriptorStatus(OK, RateLimit(5, Unit.SECOND, name="burst"), 4, 1),
            )
        )

        assert as_dict(headers) == {
            "x-ratelimit-limit": '100, 10;w=60;name="per-user", 100;w=3600, 5;w=1;name="burst"',
            "x-ratelimit-remaining": "3",
            "x-ratelimit-reset": "3000",
        }

    def test_tie_goes_to_the_first_status(self) -> None:
        """On equal remaining counts the earlier status is reported."""
        headers = x_ratelimit_headers(
            result(
                DescriptorStatus(OK, RateLimit(3, Unit.MINUTE), 2, 30),
                DescriptorStatus(OK, RateLimit(9, Unit.HOUR), 2, 1800),
            )
        )

        assert as_dict(headers)["x-ratelimit-limit"].startswith("3, ")
        assert as_dict(headers)["x-ratelimit-reset"] == "30"

    def test_over_limit_reports_zero_remaining(self) -> None:
        """An over-limit status (remaining 0) is the one reported."""
        headers = x_ratelimit_headers(
            result(
                DescriptorStatus(OK, RateLimit(100, Unit.HOUR), 50, 3000),
                DescriptorStatus(OVER, RateLimit(3, Unit.MINUTE), 0, 12),
                overall=OVER,
            )
        )

        assert headers == (
            ("x-ratelimit-limit", "3, 100;w=3600, 3;w=60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "12"),
        )

    def test_statuses_without_a_limit_are_skipped(self) -> None:
        """No-limit and unlimited statuses (no current_limit) neither compete nor appear."""
        unlimited_flag = DescriptorStatus(OK, RateLimit(0, Unit.SECOND, unlimited=True), 0, 1)
        headers = x_ratelimit_headers(
            result(
                NO_LIMIT,
                UNLIMITED,
                unlimited_flag,
                DescriptorStatus(OK, RateLimit(1000, Unit.DAY), 999, 86_000),
            )
        )

        assert headers == (
            ("x-ratelimit-limit", "1000, 1000;w=86400"),
            ("x-ratelimit-remaining", "999"),
            ("x-ratelimit-reset", "86000"),
        )

    def test_no_limited_status_means_no_headers(self) -> None:
        """Without any current limit the filter adds none of the three headers."""
        assert x_ratelimit_headers(result(NO_LIMIT, UNLIMITED)) == ()
        assert x_ratelimit_headers(result()) == ()

    def test_shadow_mode_status_is_reported_like_any_other(self) -> None:
        """A shadow-mode limit (OK, remaining 0) still wins the fewest-remaining choice."""
        shadow = RateLimit(2, Unit.MINUTE, shadow_mode=True)
        answer = result(
            DescriptorStatus(OK, RateLimit(20, Unit.MINUTE), 9, 30),
            DescriptorStatus(OK, shadow, 0, 30),
        )

        assert as_dict(x_ratelimit_headers(answer)) == {
            "x-ratelimit-limit": "2, 20;w=60, 2;w=60",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": "30",
        }
        assert not is_rate_limited(answer)

    def test_global_shadow_mode_keeps_headers_without_denial(self) -> None:
        """Codes are ignored: an OVER_LIMIT status under an OK overall gives headers, no 429."""
        answer = result(DescriptorStatus(OVER, RateLimit(2, Unit.MINUTE), 0, 30))

        assert as_dict(x_ratelimit_headers(answer))["x-ratelimit-remaining"] == "0"
        assert not is_rate_limited(answer)
        assert response_headers(answer) == x_ratelimit_headers(answer)

    @pytest.mark.parametrize(
        ("unit", "seconds"),
        [
            (Unit.SECOND, 1),
            (Unit.MINUTE, 60),
            (Unit.HOUR, 3_600),
            (Unit.DAY, 86_400),
            (Unit.WEEK, 604_800),
            (Unit.MONTH, 2_592_000),
            (Unit.YEAR, 31_536_000),
        ],
    )
    def test_window_seconds_per_unit(self, unit: Unit, seconds: int) -> None:
        """Each unit's w= value is convertRateLimitUnit's (month 30 days, year 365)."""
        assert window_seconds(unit) == seconds
        headers = x_ratelimit_headers(result(DescriptorStatus(OK, RateLimit(5, unit), 4, 1)))
        assert as_dict(headers)["x-ratelimit-limit"] == f"5, 5;w={seconds}"

    def test_reset_is_duration_until_reset_or_zero(self) -> None:
        """Reset is the status's reset_seconds, 0 when no duration_until_reset was sent."""
        with_reset = result(DescriptorStatus(OK, PER_MINUTE, 4, 17))
        without = result(DescriptorStatus(OK, PER_MINUTE, 4, None))

        assert as_dict(x_ratelimit_headers(with_reset))["x-ratelimit-reset"] == "17"
        assert as_dict(x_ratelimit_headers(without))["x-ratelimit-reset"] == "0"

    def test_empty_name_is_left_out(self) -> None:
        """Only a named limit gets ;name="..." in the policy."""
        named = result(DescriptorStatus(OK, RateLimit(1, Unit.MINUTE, name="n"), 0, 5))
        unnamed = result(DescriptorStatus(OK, RateLimit(1, Unit.MINUTE), 0, 5))

        assert as_dict(x_ratelimit_headers(named))["x-ratelimit-limit"] == '1, 1;w=60;name="n"'
        assert as_dict(x_ratelimit_headers(unnamed))["x-ratelimit-limit"] == "1, 1;w=60"

    def test_disabled_filter_adds_nothing(self) -> None:
        """enable_x_ratelimit_headers OFF: no x-ratelimit-* headers."""
        answer = result(DescriptorStatus(OK, PER_MINUTE, 7, 42))

        assert x_ratelimit_headers(answer, enabled=False) == ()

    def test_descriptor_option_off_on_the_reported_status_drops_all_headers(self) -> None:
        """If the fewest-remaining descriptor has x_ratelimit_option OFF, none are added."""
        answer = result(
            DescriptorStatus(OK, PER_MINUTE, 2, 5),
            DescriptorStatus(OK, RateLimit(50, Unit.HOUR, name="h"), 1, 100),
        )

        assert x_ratelimit_headers(answer, descriptor_options=(None, False)) == ()

    def test_descriptor_option_off_elsewhere_only_shortens_the_policy(self) -> None:
        """A descriptor with the option OFF is left out of the policy, not of the choice."""
        answer = result(
            DescriptorStatus(OK, PER_MINUTE, 1, 5),
            DescriptorStatus(OK, RateLimit(50, Unit.HOUR, name="h"), 9, 100),
        )

        headers = x_ratelimit_headers(answer, descriptor_options=(None, False))
        assert as_dict(headers)["x-ratelimit-limit"] == "10, 10;w=60"

    def test_descriptor_option_on_overrides_a_disabled_filter(self) -> None:
        """x_ratelimit_option DRAFT_VERSION_03 on a descriptor enables it with the filter OFF."""
        answer = result(
            DescriptorStatus(OK, PER_MINUTE, 1, 5),
            DescriptorStatus(OK, RateLimit(50, Unit.HOUR), 9, 100),
        )

        headers = x_ratelimit_headers(answer, enabled=False, descriptor_options=(True,))
        assert as_dict(headers) == {
            "x-ratelimit-limit": "10, 10;w=60",
            "x-ratelimit-remaining": "1",
            "x-ratelimit-reset": "5",
        }


class TestResponseHeaders:
    def test_within_limit_adds_service_headers_then_x_ratelimit(self) -> None:
        """OK: the service's headers (lower-cased) then x-ratelimit-*; no x-envoy-ratelimited."""
        answer = result(
            DescriptorStatus(OK, PER_MINUTE, 3, 5), headers=(("RateLimit-Remaining", "3"),)
        )

        assert response_headers(answer) == (
            ("ratelimit-remaining", "3"),
            ("x-ratelimit-limit", "10, 10;w=60"),
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-reset", "5"),
        )

    def test_over_limit_adds_x_envoy_ratelimited_between(self) -> None:
        """OVER_LIMIT: service headers, x-envoy-ratelimited: true, then x-ratelimit-*."""
        answer = result(
            DescriptorStatus(OVER, PER_MINUTE, 0, 5),
            overall=OVER,
            headers=(("RateLimit-Limit", "10"), ("X-Custom", "a")),
        )

        assert is_rate_limited(answer)
        assert response_headers(answer) == (
            ("ratelimit-limit", "10"),
            ("x-custom", "a"),
            ("x-envoy-ratelimited", "true"),
            ("x-ratelimit-limit", "10, 10;w=60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "5"),
        )

    def test_x_envoy_ratelimited_from_the_service_is_set_in_place(self) -> None:
        """A service-sent x-envoy-ratelimited keeps its position and becomes "true"."""
        answer = result(
            DescriptorStatus(OVER, PER_MINUTE, 0, 5),
            overall=OVER,
            headers=(("a", "1"), ("X-Envoy-RateLimited", "no"), ("b", "2")),
        )

        assert response_headers(answer, x_ratelimit=False) == (
            ("a", "1"),
            ("x-envoy-ratelimited", "true"),
            ("b", "2"),
        )

    def test_switches_drop_their_headers(self) -> None:
        """disable_x_envoy_ratelimited_header and OFF headers leave only the service's."""
        answer = result(DescriptorStatus(OVER, PER_MINUTE, 0, 5), overall=OVER)

        assert response_headers(answer, x_ratelimit=False, x_envoy_ratelimited=False) == ()


class TestReplies:
    def test_over_limit_reply(self) -> None:
        """Over limit, the Check answers as the filter's default: 429 and the header."""
        assert RATE_LIMITED_STATUS == 429
        assert X_ENVOY_RATELIMITED_HEADER == ("x-envoy-ratelimited", "true")

    def test_service_error_reply(self) -> None:
        """failure_mode_deny: 500 with no header of the filter's own."""
        assert STORE_FAILURE_STATUS == 500
        assert STORE_FAILURE_HEADERS == ()

    def test_current_limit_mirrors_the_servicer(self) -> None:
        """Only a set, non-unlimited limit becomes current_limit."""
        assert current_limit(NO_LIMIT) is None
        assert (
            current_limit(DescriptorStatus(OK, RateLimit(1, Unit.SECOND, unlimited=True))) is None
        )
        assert current_limit(DescriptorStatus(OK, PER_MINUTE, 1)) is PER_MINUTE
