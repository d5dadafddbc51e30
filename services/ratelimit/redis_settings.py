"""How the rate limit service reaches Redis: the URL, pool size, timeouts and key TTL jitter.

Filled from ``--redis*`` / ``MIXERLESS_REDIS*`` by ``services.settings``; read by
``RedisCounterStore.from_settings``. The URL forms are in ``services.ratelimit.redis_url``.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Connection settings of the Redis counter store (times in seconds)."""

    url: str
    pool_size: int
    connect_timeout: float
    timeout: float
    expiration_jitter: int
