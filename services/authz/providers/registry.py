"""One client per provider configuration, kept across policy reloads.

Clients are keyed by the provider's whole configuration: a reload that keeps a provider
as it was keeps its connections; a provider whose settings changed gets a new client,
and the old one is closed once calls already under way have had ``grace`` seconds to
finish. ``retain`` closes the clients of providers a reload removed.
"""

import asyncio
from collections.abc import Iterable

from services.authz.providers.client import AuthzProviderClient
from services.authz.providers.config import GrpcProvider, Provider
from services.authz.providers.grpc_provider import GrpcProviderClient
from services.authz.providers.http_provider import (
    HttpProviderClient,
    SessionFactory,
    default_session,
)

DEFAULT_GRACE = 30.0


class ProviderClients:
    """The clients of the configured extension providers, made on first use."""

    def __init__(
        self,
        *,
        http_session_factory: SessionFactory = default_session,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._http_session_factory = http_session_factory
        self._grace = grace
        self._clients: dict[Provider, AuthzProviderClient] = {}
        self._by_name: dict[str, Provider] = {}
        self._closing: dict[asyncio.Task[None], AuthzProviderClient] = {}

    def get(self, provider: Provider) -> AuthzProviderClient:
        """The client for ``provider``; one with the same name but older settings is retired."""
        client = self._clients.get(provider)
        if client is not None:
            return client
        previous = self._by_name.get(provider.name)
        if previous is not None:
            self._retire(previous)
        client = self._make(provider)
        self._clients[provider] = client
        self._by_name[provider.name] = provider
        return client

    def _make(self, provider: Provider) -> AuthzProviderClient:
        if isinstance(provider, GrpcProvider):
            return GrpcProviderClient(provider)
        return HttpProviderClient(provider, self._http_session_factory)

    async def retain(self, providers: Iterable[Provider]) -> None:
        """Close the clients of providers not in ``providers`` (call after a reload)."""
        keep = set(providers)
        for provider in [p for p in self._clients if p not in keep]:
            self._retire(provider)

    def _retire(self, provider: Provider) -> None:
        client = self._clients.pop(provider, None)
        if self._by_name.get(provider.name) == provider:
            del self._by_name[provider.name]
        if client is None:
            return
        task = asyncio.get_running_loop().create_task(self._close_later(client))
        self._closing[task] = client
        task.add_done_callback(lambda done: self._closing.pop(done, None))

    async def _close_later(self, client: AuthzProviderClient) -> None:
        await asyncio.sleep(self._grace)
        await client.close()

    async def close(self) -> None:
        """Close every client now, and those waiting out their grace period."""
        clients = [*self._clients.values(), *self._closing.values()]
        tasks = list(self._closing)
        self._clients.clear()
        self._by_name.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(client.close() for client in clients))
