"""Key sources: inline JWKS, and remote JWKS fetched, cached, refreshed and failed closed."""

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from services.authz.jwt.keys import (
    JwksUnavailableError,
    KeyResolver,
    RemoteKeySource,
    StaticKeySource,
)
from services.authz.jwt.rules import JwtRule
from services.clock import ManualClock
from tests.jwt_issuer import JwksServer, jwks, public_pem


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (up to 2 s) until ``condition()`` holds: background fetches finish on their own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    running = await JwksServer(jwks("rsa")).start()
    yield running
    await running.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def remote(clock: ManualClock) -> AsyncIterator[RemoteKeySource]:
    source = RemoteKeySource(clock=clock)
    yield source
    await source.aclose()


def uri_rule(server: JwksServer, **kwargs: object) -> JwtRule:
    return JwtRule(issuer="https://issuer.example.com", jwks_uri=server.jwks_uri, **kwargs)  # type: ignore[arg-type]


class TestStatic:
    async def test_inline_jwks(self) -> None:
        """Inline JWKS are parsed once and returned for every call."""
        source = StaticKeySource()
        rule = JwtRule(issuer="i", jwks=jwks("rsa", "ec256"))
        first = await source.keys(rule)
        assert [k.kid for k in first.keys] == ["rsa", "ec256"]
        assert await source.keys(rule) is first
        assert await source.refresh(rule) is first

    async def test_inline_pem(self) -> None:
        """A PEM public key works as inline keys."""
        keys = await StaticKeySource().keys(JwtRule(issuer="i", jwks=public_pem("ec256")))
        assert keys.keys[0].kty == "EC"

    async def test_unusable_inline_jwks_fail(self) -> None:
        """A broken inline set raises with "Jwks doesn't have any valid public key"."""
        with pytest.raises(JwksUnavailableError) as caught:
            await StaticKeySource().keys(JwtRule(issuer="i", jwks='{"keys": [{"kty": "RSA"}]}'))
        assert caught.value.status == "Jwks doesn't have any valid public key"
        assert "[n] field is missing for a RSA key" in caught.value.detail


class TestResolver:
    async def test_inline_wins_over_uri(self, server: JwksServer) -> None:
        """A rule with both ``jwks`` and ``jwksUri`` uses the inline keys, no fetch."""
        resolver = KeyResolver(remote=RemoteKeySource())
        rule = JwtRule(issuer="i", jwks=jwks("ec256"), jwks_uri=server.jwks_uri)
        assert [k.kid for k in (await resolver.keys(rule)).keys] == ["ec256"]
        assert server.jwks_fetches == 0
        await resolver.aclose()

    async def test_remote_disabled(self) -> None:
        """Without a remote source, rules needing remote keys fail closed."""
        with pytest.raises(JwksUnavailableError) as caught:
            await KeyResolver().keys(JwtRule(issuer="i", jwks_uri="https://x/jwks"))
        assert caught.value.status == "Jwks remote fetch is failed"


class TestRemoteFetch:
    async def test_fetch_and_cache(self, server: JwksServer, remote: RemoteKeySource) -> None:
        """Keys are fetched from ``jwksUri`` once and then served from the cache."""
        rule = uri_rule(server)
        keys = await remote.keys(rule)
        assert [k.kid for k in keys.keys] == ["rsa"]
        assert await remote.keys(rule) is keys
        assert server.jwks_fetches == 1

    async def test_oidc_discovery(self, server: JwksServer, remote: RemoteKeySource) -> None:
        """Without ``jwksUri`` the issuer's discovery document names the key set."""
        rule = JwtRule(issuer=server.issuer)  # ends with "/": stripped before the suffix
        keys = await remote.keys(rule)
        assert [k.kid for k in keys.keys] == ["rsa"]
        assert (server.discovery_fetches, server.jwks_fetches) == (1, 1)

    async def test_concurrent_callers_share_one_fetch(
        self, server: JwksServer, remote: RemoteKeySource
    ) -> None:
        """Requests arriving while the first fetch runs wait for it instead of fetching."""
        server.delay = 0.05
        rule = uri_rule(server)
        results = await asyncio.gather(*(remote.keys(rule) for _ in range(5)))
        assert all(r is results[0] for r in results)
        assert server.jwks_fetches == 1

    async def test_fail_closed_before_first_fetch(
        self, server: JwksServer, remote: RemoteKeySource, clock: ManualClock
    ) -> None:
        """No keys ever fetched: "Jwks remote fetch is failed", retried after a minute."""
        server.fail = True
        rule = uri_rule(server)
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(rule)
        assert caught.value.status == "Jwks remote fetch is failed"
        assert "HTTP 500" in caught.value.detail
        with pytest.raises(JwksUnavailableError):
            await remote.keys(rule)
        assert server.jwks_fetches == 1  # within the retry interval: no new fetch
        server.fail = False
        clock.advance(60)
        assert len((await remote.keys(rule)).keys) == 1
        assert server.jwks_fetches == 2

    async def test_timeout(self, server: JwksServer, remote: RemoteKeySource) -> None:
        """A server slower than the rule's timeout is a failed fetch."""
        server.delay = 0.2
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(uri_rule(server, timeout=0.05))
        assert "timed out" in caught.value.detail

    @pytest.mark.parametrize(
        "uri", ["file:///etc/passwd", "ftp://example.com/jwks", "gopher://x", "http:///nohost"]
    )
    async def test_only_http_uris(self, remote: RemoteKeySource, uri: str) -> None:
        """Non-HTTP(S) URIs are refused without any I/O."""
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(JwtRule(issuer="i", jwks_uri=uri))
        assert "only http and https" in caught.value.detail

    @pytest.mark.parametrize(
        ("document", "reason"),
        [
            ('{"jwks_uri": "file:///etc/passwd"}', "only http and https"),
            ('{"issuer": "x"}', "no jwks_uri"),
            ("[1]", "no jwks_uri"),
            ("<html>", "JSONDecodeError"),
        ],
    )
    async def test_bad_discovery_document(
        self, server: JwksServer, remote: RemoteKeySource, document: str, reason: str
    ) -> None:
        """A discovery document without a usable HTTP(S) ``jwks_uri`` fails the fetch."""
        server.discovery = document
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(JwtRule(issuer=server.issuer))
        assert reason in caught.value.detail
        assert server.jwks_fetches == 0

    async def test_missing_discovery_document(
        self, server: JwksServer, remote: RemoteKeySource
    ) -> None:
        """An issuer without a discovery document cannot supply keys."""
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(JwtRule(issuer=f"{server.base_url}/nowhere"))
        assert "HTTP 404" in caught.value.detail

    @pytest.mark.parametrize(
        ("body", "reason"),
        [("{not json", "Jwks is an invalid JSON"), ('{"keys": []}', "any valid public key")],
    )
    async def test_unusable_body_is_a_failure(
        self, server: JwksServer, remote: RemoteKeySource, body: str, reason: str
    ) -> None:
        """Bad JSON or a set without usable keys counts as a failed fetch."""
        server.body = body
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(uri_rule(server))
        assert reason in caught.value.detail

    async def test_redirects_are_not_followed(
        self, server: JwksServer, remote: RemoteKeySource
    ) -> None:
        """A redirect is a failed fetch, not a second request."""
        with pytest.raises(JwksUnavailableError) as caught:
            await remote.keys(JwtRule(issuer="i", jwks_uri=f"{server.base_url}/redirect"))
        assert "HTTP 302" in caught.value.detail
        assert server.jwks_fetches == 0

    async def test_response_size_is_bounded(self, server: JwksServer) -> None:
        """Bodies above the limit are refused."""
        source = RemoteKeySource(max_bytes=64 * 1024)
        with pytest.raises(JwksUnavailableError) as caught:
            await source.keys(JwtRule(issuer="i", jwks_uri=f"{server.base_url}/big"))
        assert "larger than 65536 bytes" in caught.value.detail
        await source.aclose()


class TestRemoteRefresh:
    async def test_background_refresh_on_interval(
        self, server: JwksServer, remote: RemoteKeySource, clock: ManualClock
    ) -> None:
        """After 20 minutes the old keys are served while new ones are fetched."""
        rule = uri_rule(server)
        old = await remote.keys(rule)
        server.document = jwks("rsa-2")
        clock.advance(1199)
        assert await remote.keys(rule) is old and server.jwks_fetches == 1
        clock.advance(1)
        assert await remote.keys(rule) is old  # served immediately, refresh in background
        await eventually(lambda: remote.cached(rule) is not old)
        assert [k.kid for k in (await remote.keys(rule)).keys] == ["rsa-2"]

    async def test_last_good_keys_survive_failed_refreshes(
        self, server: JwksServer, remote: RemoteKeySource, clock: ManualClock
    ) -> None:
        """A failing refresh keeps serving the previous keys and retries after a minute."""
        rule = uri_rule(server)
        good = await remote.keys(rule)
        server.fail = True
        clock.advance(1200)
        assert await remote.keys(rule) is good
        await eventually(lambda: server.jwks_fetches == 2)
        await asyncio.sleep(0.01)
        assert await remote.keys(rule) is good
        assert server.jwks_fetches == 2  # no retry before the retry interval
        clock.advance(60)
        assert await remote.keys(rule) is good
        await eventually(lambda: server.jwks_fetches == 3)

    async def test_unknown_kid_refresh_is_rate_limited(
        self, server: JwksServer, remote: RemoteKeySource, clock: ManualClock
    ) -> None:
        """A forced refresh fetches at once, but at most once per 30 seconds."""
        rule = uri_rule(server)
        await remote.keys(rule)
        server.document = jwks("rsa", "rsa-2")
        refreshed = await remote.refresh(rule)
        assert [k.kid for k in refreshed.keys] == ["rsa", "rsa-2"]
        server.document = jwks("ec256")
        assert await remote.refresh(rule) is refreshed
        assert server.jwks_fetches == 2
        clock.advance(30)
        assert [k.kid for k in (await remote.refresh(rule)).keys] == ["ec256"]
        assert server.jwks_fetches == 3

    async def test_failed_forced_refresh_keeps_keys(
        self, server: JwksServer, remote: RemoteKeySource
    ) -> None:
        """An unknown-kid refresh that fails still returns the last good keys."""
        rule = uri_rule(server)
        good = await remote.keys(rule)
        server.fail = True
        assert await remote.refresh(rule) is good

    async def test_cache_is_per_issuer_and_uri(
        self, server: JwksServer, remote: RemoteKeySource
    ) -> None:
        """Two issuers sharing a URI have separate entries."""
        await remote.keys(uri_rule(server))
        await remote.keys(JwtRule(issuer="https://second.example.com", jwks_uri=server.jwks_uri))
        assert server.jwks_fetches == 2
