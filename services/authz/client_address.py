"""The client address behind ``remote.ip``/``remoteIpBlocks``, from X-Forwarded-For.

Envoy (``ConnectionManagerUtility::mutateRequestHeaders`` and
``Utility::getLastAddressFromXFF`` in ``source/common/http/``) computes the trusted client
address before it appends the peer to XFF:

* ``use_remote_address: true`` (Istio gateways) with ``xff_num_trusted_hops: N``: N=0 → the
  peer (the connection's remote address, after PROXY protocol); N>0 → skip N-1 entries from
  the right of the *incoming* XFF and take the next one, i.e. the N-th from the right. Too
  few entries, or an entry that does not parse as an IP → the peer.
* ``use_remote_address: false`` (sidecar inbound, 0 trusted hops): the rightmost entry if it
  parses as an IP, else the peer. This is client-controlled and spoofable.

Envoy then appends the peer (or, for a loopback peer, its own address) to XFF, and that is
the header the ext_authz server receives. So on a gateway the trusted entry is the
(N+1)-th from the right of the *received* XFF; that is what :func:`trusted_client_address`
reads.

Parsing, as Envoy's: entries are split on ``,`` only; spaces and tabs around an entry are
ignored; the entry must be a bare IPv4 or IPv6 address (Envoy's
``parseInternetAddressNoThrow``: ``inet_pton``, or numeric ``getaddrinfo`` for IPv6; here
``inet_pton`` for both). ``1.2.3.4:80``, ``[::1]`` and ``[::1]:80`` are *not* addresses
to Envoy, so they make it fall back to the peer; pass ``allow_port=True`` to strip such
ports and brackets instead (a deliberate deviation from Envoy, off by default). An IPv6
zone (``fe80::1%eth0``) is treated as unparseable, and so is an empty entry.

An address taken from XFF is returned as written there (trimmed; with ``allow_port``,
without its port), once validated; the IP matchers parse it again. The peer is returned as
given.
"""

from __future__ import annotations

from services.authz.matchers import parse_ip

__all__ = ["sidecar_remote_address", "trusted_client_address"]

_WHITESPACE = " \t\f\v\n\r"  # what Envoy's StringUtil::ltrim/rtrim remove


def trusted_client_address(
    peer: str, xff: str | None, trusted_hops: int, *, allow_port: bool = False
) -> str:
    """Envoy's gateway client address (``use_remote_address=true``, N trusted hops).

    ``xff`` is the header as the ext_authz server received it, with the peer already
    appended by Envoy. Returns the (N+1)-th entry from the right when N>0 and it is a
    valid IP; otherwise ``peer``.
    """
    if trusted_hops < 0:
        raise ValueError("trusted_hops must be 0 or more")
    if trusted_hops == 0 or not xff:
        return peer
    entries = xff.split(",")
    position = trusted_hops + 1
    if len(entries) < position:
        return peer
    address = _parse(entries[-position], allow_port)
    return peer if address is None else address


def sidecar_remote_address(peer: str, xff: str | None, *, allow_port: bool = False) -> str:
    """Envoy's sidecar-inbound client address (``use_remote_address=false``, 0 hops).

    The rightmost XFF entry if it is a valid IP, else ``peer``. Anyone can set it: use only
    where Istio's sidecar semantics are wanted.
    """
    if not xff:
        return peer
    address = _parse(xff.rsplit(",", 1)[-1], allow_port)
    return peer if address is None else address


def _parse(entry: str, allow_port: bool) -> str | None:
    text = entry.strip(_WHITESPACE)
    if allow_port:
        text = _strip_port(text)
    return text if text and parse_ip(text) is not None else None


def _strip_port(text: str) -> str:
    """``[v6]:port`` / ``[v6]`` → ``v6``; ``v4:port`` → ``v4``; anything else unchanged."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return text
        rest = text[close + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii()):
            return text
        return text[1:close]
    host, sep, port = text.rpartition(":")
    if sep and "." in host and ":" not in host and port.isdigit() and port.isascii():
        return host
    return text
