"""``envoyExtAuthzHttp``: ask a plain HTTP server, as Envoy's ``RawHttpClientImpl`` does.

The check request (``ext_authz_http_impl.cc``, ``RawHttpClientImpl::check``):

* the original method, to ``http://<host>:<port><pathPrefix><original path and query>``;
* ``Host`` is the original ``:authority``; ``Authorization`` is always copied (Envoy adds
  it to the allowed headers with ``:method``, ``:path`` and ``:authority``), and so are the
  client headers matching ``includeRequestHeadersInCheck`` (or the deprecated
  ``includeHeadersInCheck`` when that is empty);
* ``Content-Length`` is the length of what is sent: 0, or the body per
  ``includeRequestBodyInCheck`` (``x-envoy-auth-partial-body`` is then one of the
  candidate headers, so it is sent only if a pattern matches it);
* ``includeAdditionalHeadersInCheck`` last, replacing headers of the same name.

Nothing else: no ``User-Agent``, ``Accept`` or ``Content-Type`` of the client library,
no cookies kept between calls, no redirects followed. Hop-by-hop headers
(``connection``, ``transfer-encoding``, ``upgrade``...) are never copied, since they
describe the client's connection, not this one.

The answer (``RawHttpClientImpl::toResponse``):

* a 5xx is an error (``failOpen`` / ``statusOnError``), as is a failed call or a timeout,
  and so is a status that is no HTTP status (under 100 or over 599): it is never passed
  on to the client;
* 200 is an allow: headers matching ``headersToUpstreamOnAllow`` are set on the upstream
  request (the last of a repeated name wins), the comma-separated names in
  ``x-envoy-auth-headers-to-remove`` are removed from it, and headers matching
  ``headersToDownstreamOnAllow`` are added to the client's response;
* anything else (including 201, 3xx and 4xx) is a denial with that status and body, and
  the headers matching ``headersToDownstreamOnDeny`` plus ``www-authenticate`` and
  ``location``; when that list is empty, every header but ``host``.

Headers about framing (``content-length``, ``transfer-encoding``, ``connection``...) are
never passed on, upstream or to the client: they describe the provider's connection.
The body read is bounded (``max_body_bytes``, 1 MiB by default); a longer body is cut,
and bytes that are not UTF-8 are replaced (a ``CheckResponse`` body is a string).
"""

from collections.abc import Callable, Iterable

import aiohttp
from yarl import URL

from services.authz.model import CheckInput, Header
from services.authz.providers.client import (
    PARTIAL_BODY_HEADER,
    PAYLOAD_TOO_LARGE,
    CheckBody,
    FailureLog,
    ProviderDecision,
    check_body,
    error_decision,
    removable,
)
from services.authz.providers.config import HttpProvider
from services.inline import require_loop

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "content-length",
    }
)
ALWAYS_TO_CLIENT_ON_DENY = frozenset({"www-authenticate", "location"})
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

SessionFactory = Callable[[], aiohttp.ClientSession]


def default_session() -> aiohttp.ClientSession:
    """A session for one provider: pooled keep-alive connections, no cookies, raw bodies."""
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30, ttl_dns_cache=10)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )


class HttpProviderClient:
    """Asks one HTTP provider; the session is made on first use (on the running loop)."""

    def __init__(
        self,
        provider: HttpProvider,
        session_factory: SessionFactory = default_session,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.provider = provider
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._max_body_bytes = max_body_bytes
        self._base = f"http://{provider.address}{provider.path_prefix}"
        self._timeout = aiohttp.ClientTimeout(total=provider.timeout or None)
        self._request_patterns = provider.request_header_patterns
        self._failures = FailureLog(provider)

    async def check(self, check: CheckInput) -> ProviderDecision:
        require_loop("a CUSTOM provider call")
        body = check_body(self.provider, check.request)
        if body.too_large:
            return PAYLOAD_TOO_LARGE
        if self._session is None:
            self._session = self._session_factory()
        path = check.request.path.partition("#")[0]
        try:
            async with self._session.request(
                check.request.method,
                URL(self._base + path, encoded=True),
                headers=self.request_headers(check, body),
                data=body.data or None,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                status = response.status
                headers = [(name.lower(), value) for name, value in response.headers.items()]
                raw_body = await self._read_body(response)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._failures.failed(repr(exc))
            return error_decision(self.provider)
        if not 100 <= status <= 499:  # a 5xx, or no HTTP status at all (600, 99)
            self._failures.failed(f"HTTP {status}")
            return error_decision(self.provider)
        return self.decision(status, headers, raw_body)

    def request_headers(self, check: CheckInput, body: CheckBody) -> dict[str, str]:
        """The headers of the check request, by lower-case name, in Envoy's order."""
        request = check.request
        headers = {"content-length": str(len(body.data))}
        for name, value in request.headers.items():
            # a client's own partial-body header never reaches the CheckRequest in Envoy
            if name != PARTIAL_BODY_HEADER and self._copied(name):
                headers[name] = value
        if body.partial is not None and self._copied(PARTIAL_BODY_HEADER):
            headers[PARTIAL_BODY_HEADER] = body.partial
        if request.host:
            headers["host"] = request.host
        for name, template in self.provider.include_additional_headers_in_check:
            headers[name] = template.render(check)
        return headers

    def _copied(self, name: str) -> bool:
        if name.startswith(":") or name == "host" or name in HOP_BY_HOP:
            return False
        return name == "authorization" or self._request_patterns.matches(name)

    def decision(self, status: int, headers: list[Header], raw_body: bytes) -> ProviderDecision:
        """A (non-5xx) answer read as Envoy's HTTP ext_authz client reads it."""
        provider = self.provider
        to_remove: list[str] = []
        kept: list[Header] = []
        for name, value in headers:
            if name == HEADERS_TO_REMOVE:
                to_remove.extend(n.strip().lower() for n in value.split(","))
            else:
                kept.append((name, value))
        if status == 200:
            on_allow = provider.headers_to_upstream_on_allow
            upstream = {n: v for n, v in _unframed(kept) if on_allow.matches(n)}
            return ProviderDecision(
                True,
                upstream_headers=tuple(upstream.items()),
                upstream_headers_to_remove=tuple(dict.fromkeys(filter(removable, to_remove))),
                downstream_headers=_unframed(
                    (n, v) for n, v in kept if provider.headers_to_downstream_on_allow.matches(n)
                ),
            )
        on_deny = provider.headers_to_downstream_on_deny
        if on_deny:
            client = [
                (n, v) for n, v in kept if n in ALWAYS_TO_CLIENT_ON_DENY or on_deny.matches(n)
            ]
        else:
            client = [(n, v) for n, v in kept if n != "host"]
        body = raw_body.decode("utf-8", errors="replace")
        return ProviderDecision(False, status, body, downstream_headers=_unframed(client))

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        room = self._max_body_bytes
        async for chunk in response.content.iter_chunked(64 * 1024):
            chunks.append(chunk[:room])
            room -= len(chunks[-1])
            if room <= 0:
                break  # the rest is dropped with the connection
        return b"".join(chunks)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _unframed(headers: Iterable[Header]) -> tuple[Header, ...]:
    return tuple((n, v) for n, v in headers if n not in HOP_BY_HOP)
