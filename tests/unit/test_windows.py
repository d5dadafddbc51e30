"""Window math aligned to the epoch, and collision-free counter keys."""

from services.ratelimit.windows import (
    counter_key,
    descriptor_key,
    seconds_until_reset,
    window_start,
)


class TestWindows:
    def test_window_start_aligns_to_epoch(self) -> None:
        """Windows start at multiples of their length since the epoch (upstream examples)."""
        assert window_start(1234, 1) == 1234
        assert window_start(1234, 60) == 1200
        assert window_start(1_000_000, 3600) == 997_200

    def test_reset_counts_down_to_one(self) -> None:
        """duration_until_reset runs from the window length down to 1."""
        assert seconds_until_reset(1200, 60) == 60
        assert seconds_until_reset(1259, 60) == 1
        assert seconds_until_reset(1234, 1) == 1


class TestKeys:
    def test_joined_names_cannot_collide(self) -> None:
        """Keys and values that join the same way with ``_`` still get distinct keys."""
        assert descriptor_key("d", [("a_b", "c")]) != descriptor_key("d", [("a", "b_c")])
        assert descriptor_key("d_a", [("b", "c")]) != descriptor_key("d", [("a_b", "c")])
        assert descriptor_key("d", [("a", "b|1:c=1:d")]) != descriptor_key(
            "d", [("a", "b"), ("c", "d")]
        )

    def test_window_is_part_of_the_key(self) -> None:
        """Different windows, or units with the same start, are different counters."""
        base = descriptor_key("d", [("k", "v")])
        assert counter_key("", base, 60, 3600) != counter_key("", base, 3600, 3600)
        assert counter_key("", base, 60, 3600) != counter_key("", base, 60, 3660)
        assert counter_key("p:", base, 60, 0).startswith("p:")
