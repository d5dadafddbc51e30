"""The trusted client address from X-Forwarded-For, as Envoy computes it."""

import pytest

from services.authz.client_address import sidecar_remote_address, trusted_client_address

PEER = "10.0.0.9"  # the connection's remote address; Envoy appended it to the XFF below


class TestGateway:
    @pytest.mark.parametrize(
        ("xff", "hops", "expected"),
        [
            # No trusted proxy: always the peer, whatever the client wrote.
            (None, 0, PEER),
            ("1.1.1.1, 10.0.0.9", 0, PEER),
            # One trusted proxy (e.g. a cloud LB): the entry it appended.
            ("203.0.113.7,10.0.0.9", 1, "203.0.113.7"),
            ("203.0.113.7, 10.0.0.9", 1, "203.0.113.7"),
            # The client prepended spoofed entries: they are ignored.
            ("6.6.6.6, 7.7.7.7, 203.0.113.7, 10.0.0.9", 1, "203.0.113.7"),
            # Two trusted proxies: the address the outer one saw.
            ("198.51.100.1, 203.0.113.7, 10.0.0.9", 2, "198.51.100.1"),
            ("6.6.6.6, 198.51.100.1, 203.0.113.7, 10.0.0.9", 2, "198.51.100.1"),
            # Too few entries for the configured hops: the peer.
            ("10.0.0.9", 1, PEER),
            ("203.0.113.7, 10.0.0.9", 2, PEER),
            (None, 1, PEER),
            ("", 1, PEER),
        ],
    )
    def test_nth_entry_from_the_right(self, xff: str | None, hops: int, expected: str) -> None:
        """With N trusted hops the (N+1)-th received entry from the right is the client."""
        assert trusted_client_address(PEER, xff, hops) == expected

    @pytest.mark.parametrize(
        ("xff", "hops", "expected"),
        [
            ("2001:db8::7, 10.0.0.9", 1, "2001:db8::7"),
            ("2001:DB8:0:0::7,10.0.0.9", 1, "2001:DB8:0:0::7"),
            ("::ffff:1.2.3.4, 10.0.0.9", 1, "::ffff:1.2.3.4"),
            ("\t203.0.113.7\t ,10.0.0.9", 1, "203.0.113.7"),
        ],
    )
    def test_ipv6_and_whitespace(self, xff: str, hops: int, expected: str) -> None:
        """IPv6 entries are accepted as written; spaces and tabs around entries are trimmed."""
        assert trusted_client_address(PEER, xff, hops) == expected

    @pytest.mark.parametrize(
        "entry",
        [
            "unknown",
            "evil.example.com",
            "",
            "1.2.3",
            "01.2.3.4",
            "1.2.3.4:8080",
            "[2001:db8::7]",
            "[2001:db8::7]:443",
            "fe80::1%eth0",
            "1.2.3.4 5.6.7.8",
        ],
    )
    def test_junk_entry_falls_back_to_peer(self, entry: str) -> None:
        """An entry Envoy cannot parse as a bare IP makes it use the peer address."""
        assert trusted_client_address(PEER, f"{entry},10.0.0.9", 1) == PEER

    def test_trailing_comma_falls_back_to_peer(self) -> None:
        """An empty entry at the trusted position is junk, as in Envoy."""
        assert trusted_client_address(PEER, "1.2.3.4,,10.0.0.9", 1) == PEER

    @pytest.mark.parametrize(
        ("entry", "expected"),
        [
            ("1.2.3.4:8080", "1.2.3.4"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]:x", PEER),
            ("host:80", PEER),
        ],
    )
    def test_allow_port_opt_in(self, entry: str, expected: str) -> None:
        """allow_port=True strips ports and brackets (not Envoy's behaviour, opt-in only)."""
        assert trusted_client_address(PEER, f"{entry},10.0.0.9", 1, allow_port=True) == expected

    def test_negative_hops_rejected(self) -> None:
        """A negative trusted-hop count is a configuration error."""
        with pytest.raises(ValueError, match="trusted_hops"):
            trusted_client_address(PEER, None, -1)


class TestSidecar:
    @pytest.mark.parametrize(
        ("xff", "expected"),
        [
            (None, PEER),
            ("", PEER),
            ("1.2.3.4", "1.2.3.4"),
            ("6.6.6.6, 1.2.3.4", "1.2.3.4"),
            ("1.2.3.4, junk", PEER),
            ("1.2.3.4,", PEER),
            ("2001:db8::1", "2001:db8::1"),
        ],
    )
    def test_rightmost_entry(self, xff: str | None, expected: str) -> None:
        """Sidecar semantics: the rightmost XFF entry if it is an IP, else the peer."""
        assert sidecar_remote_address(PEER, xff) == expected
