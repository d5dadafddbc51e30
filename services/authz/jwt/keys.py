"""Where verification keys come from: inline JWKS, or fetched from ``jwksUri`` / OIDC discovery.

The seam is ``KeySource``: ``keys(rule)`` returns the current key set for a rule,
``refresh(rule)`` is called when a token names a ``kid`` the set does not have.
Both raise ``JwksUnavailableError`` while no usable keys are known, which the
authenticator turns into a 401 (``Jwks remote fetch is failed`` for remote keys,
``Jwks doesn't have any valid public key`` for a broken inline set) - never into
"no token".

``RemoteKeySource`` follows istiod's resolver (``pilot/pkg/model/jwks_resolver.go``):
one cache entry per (issuer, jwksUri); without ``jwksUri`` the key set URL comes from
``<issuer without trailing />/.well-known/openid-configuration``; keys are
refreshed every 20 minutes, a failed refresh is retried after 1 minute, and the last
good keys keep being served while refreshes fail. Before the first successful fetch
it fails closed. Refreshes happen in the background when a request finds the keys
due; a request only waits for a fetch when there are no keys at all.

Fetches accept only ``http``/``https`` URLs, do not follow redirects, give up after
the rule's ``timeout`` per HTTP request, read at most ``max_bytes`` (1 MiB), and need
a 200 with a JWKS that yields at least one usable key; anything else is a failed
fetch. Blocking private address ranges (SSRF) is left to network policy: these
URLs come from the operator's policy files, not from requests.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog
from cachetools import LRUCache

from services.authz.jwt.jwks import JwkSet, parse_jwks
from services.authz.jwt.rules import JwtRule
from services.authz.jwt.status import JWKS_FETCH_FAIL, JWKS_NO_VALID_KEYS
from services.clock import Clock, SystemClock
from services.inline import require_loop

log = structlog.get_logger("mixerless.authz.jwt")

DEFAULT_REFRESH_INTERVAL = 20 * 60.0  # PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
DEFAULT_RETRY_INTERVAL = 60.0  # istiod's retry after a failed refresh
DEFAULT_MIN_REFRESH_GAP = 30.0  # at most one unknown-kid refresh per entry in this time
DEFAULT_MAX_BYTES = 1 << 20
OIDC_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"


class JwksUnavailableError(Exception):
    """No usable keys for a rule; ``status`` is the jwt_verify_lib string to answer with."""

    def __init__(self, detail: str, status: str = JWKS_FETCH_FAIL) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class KeySource(Protocol):
    """Protocol: the key set for a rule, and a forced refresh for an unknown ``kid``."""

    async def keys(self, rule: JwtRule) -> JwkSet: ...

    async def refresh(self, rule: JwtRule) -> JwkSet: ...


class StaticKeySource:
    """Keys from the rule's inline ``jwks`` (JWK Set JSON or PEM), parsed once per text."""

    def __init__(self, max_entries: int = 1024) -> None:
        # Bounded LRU: the texts in use stay parsed however many others come and go.
        self._parsed: LRUCache[str, JwkSet] = LRUCache(maxsize=max_entries)

    def parsed(self, rule: JwtRule) -> JwkSet:
        """The key set, synchronously; raises ``JwksUnavailableError`` when unusable."""
        text = rule.jwks
        if text is None:
            raise JwksUnavailableError(f"{rule.source or rule.issuer}: no inline jwks")
        found = self._parsed.get(text)
        if found is None:
            found = self._parsed[text] = parse_jwks(text)
        if not found.keys:
            reason = "; ".join(found.errors) or JWKS_NO_VALID_KEYS
            raise JwksUnavailableError(f"inline jwks: {reason}", JWKS_NO_VALID_KEYS)
        return found

    async def keys(self, rule: JwtRule) -> JwkSet:
        return self.parsed(rule)

    async def refresh(self, rule: JwtRule) -> JwkSet:
        return self.parsed(rule)


class _Entry:
    """One (issuer, jwksUri) key set and the state of its fetches (monotonic times)."""

    __slots__ = ("error", "failed_at", "fetched_at", "forced_at", "keys", "task")

    def __init__(self) -> None:
        self.keys: JwkSet | None = None
        self.fetched_at = 0.0
        self.failed_at: float | None = None
        self.forced_at: float | None = None
        self.error = "not fetched yet"
        self.task: asyncio.Task[None] | None = None


class RemoteKeySource:
    """Keys fetched over HTTP(S), cached and refreshed; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        min_refresh_gap: float = DEFAULT_MIN_REFRESH_GAP,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_failure: Callable[[JwtRule], None] | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._session_factory = session_factory or aiohttp.ClientSession
        self._refresh_interval = refresh_interval
        self._retry_interval = retry_interval
        self._min_refresh_gap = min_refresh_gap
        self._max_bytes = max_bytes
        self._on_failure = on_failure  # e.g. count the failure in metrics
        self._entries: dict[tuple[str, str | None], _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def keys(self, rule: JwtRule) -> JwkSet:
        entry = self._entry(rule)
        now = self._clock.monotonic()
        if entry.keys is not None:
            if entry.task is None and self._due(entry, now):
                self._start(entry, rule)
            return entry.keys
        if entry.task is None:
            if entry.failed_at is not None and now < entry.failed_at + self._retry_interval:
                raise JwksUnavailableError(entry.error)
            self._start(entry, rule)
        return await self._wait(entry)

    async def refresh(self, rule: JwtRule) -> JwkSet:
        entry = self._entry(rule)
        now = self._clock.monotonic()
        if entry.task is None:
            recent = entry.forced_at is not None and now < entry.forced_at + self._min_refresh_gap
            if recent:
                if entry.keys is None:
                    raise JwksUnavailableError(entry.error)
                return entry.keys
            require_loop("a JWKS fetch")  # before forced_at: the rerun on the loop fetches
            entry.forced_at = now
            self._start(entry, rule)
        return await self._wait(entry)

    def cached(self, rule: JwtRule) -> JwkSet | None:
        """The last good keys for a rule, without fetching (for diagnostics)."""
        entry = self._entries.get((rule.issuer, rule.jwks_uri))
        return entry.keys if entry is not None else None

    async def aclose(self) -> None:
        """Cancel fetches still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _entry(self, rule: JwtRule) -> _Entry:
        key = (rule.issuer, rule.jwks_uri)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        return entry

    def _due(self, entry: _Entry, now: float) -> bool:
        if now < entry.fetched_at + self._refresh_interval:
            return False
        failed = entry.failed_at
        return failed is None or failed < entry.fetched_at or now >= failed + self._retry_interval

    def _start(self, entry: _Entry, rule: JwtRule) -> None:
        require_loop("a JWKS fetch")
        task = asyncio.get_running_loop().create_task(self._update(entry, rule))
        entry.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, entry: _Entry) -> JwkSet:
        task = entry.task
        if task is not None:
            require_loop("a JWKS fetch")
            await asyncio.shield(task)
        if entry.keys is None:
            raise JwksUnavailableError(entry.error)
        return entry.keys

    async def _update(self, entry: _Entry, rule: JwtRule) -> None:
        try:
            keys = await self.fetch(rule)
        except JwksUnavailableError as exc:
            entry.failed_at = self._clock.monotonic()
            entry.error = exc.detail
            if self._on_failure is not None:
                self._on_failure(rule)
            log.warning(
                "jwks fetch failed",
                issuer=rule.issuer,
                jwks_uri=rule.jwks_uri,
                rule=rule.source,
                error=exc.detail,
                serving_previous_keys=entry.keys is not None,
            )
        else:
            entry.keys = keys
            entry.fetched_at = self._clock.monotonic()
            entry.failed_at = None
            entry.error = ""
            log.info("jwks fetched", issuer=rule.issuer, keys=len(keys.keys), rule=rule.source)
        finally:
            entry.task = None

    async def fetch(self, rule: JwtRule) -> JwkSet:
        """One fetch (discovery first when needed); raises ``JwksUnavailableError``."""
        timeout = aiohttp.ClientTimeout(total=rule.timeout)
        try:
            async with self._session_factory() as session:
                uri = rule.jwks_uri
                if uri is None:
                    discovery = rule.issuer.rstrip("/") + OIDC_DISCOVERY_SUFFIX
                    document = json.loads(await self._get(session, discovery, timeout))
                    uri = document.get("jwks_uri") if isinstance(document, dict) else None
                    if not isinstance(uri, str) or not uri:
                        raise JwksUnavailableError(f"{discovery}: no jwks_uri in the document")
                text = await self._get(session, uri, timeout)
        except TimeoutError:
            raise JwksUnavailableError(f"timed out after {rule.timeout:g}s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise JwksUnavailableError(f"{type(exc).__name__}: {exc}") from None
        keys = parse_jwks(text)
        if not keys.keys:
            raise JwksUnavailableError(f"{uri}: " + "; ".join(keys.errors))
        return keys

    async def _get(
        self, session: aiohttp.ClientSession, url: str, limits: aiohttp.ClientTimeout
    ) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JwksUnavailableError(f"{url!r}: only http and https URLs are fetched")
        async with session.get(url, timeout=limits, allow_redirects=False) as response:
            if response.status != 200:
                raise JwksUnavailableError(f"{url}: HTTP {response.status}")
            if (response.content_length or 0) > self._max_bytes:
                raise JwksUnavailableError(f"{url}: larger than {self._max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > self._max_bytes:
                    raise JwksUnavailableError(f"{url}: larger than {self._max_bytes} bytes")
        return body.decode("utf-8")


class KeyResolver:
    """Inline keys when the rule has ``jwks`` (Istio prefers them over ``jwksUri``), the
    remote source otherwise."""

    def __init__(
        self, static: StaticKeySource | None = None, remote: KeySource | None = None
    ) -> None:
        self.static = static or StaticKeySource()
        self.remote = remote

    def _source(self, rule: JwtRule) -> KeySource:
        if rule.jwks is not None:
            return self.static
        if self.remote is None:
            raise JwksUnavailableError(f"{rule.source or rule.issuer}: remote JWKS disabled")
        return self.remote

    async def keys(self, rule: JwtRule) -> JwkSet:
        return await self._source(rule).keys(rule)

    async def refresh(self, rule: JwtRule) -> JwkSet:
        return await self._source(rule).refresh(rule)

    async def aclose(self) -> None:
        close = getattr(self.remote, "aclose", None)
        if close is not None:
            await close()
