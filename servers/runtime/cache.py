"""Cache-aside reads over Redis that only ever make reads faster.

A server reads ``get(key)``; on a miss it reads PostgreSQL and ``put``s the value; every write
``drop``s the keys it changed after it commits. A drop leaves a short-lived empty marker, and
``put`` never overwrites a key that exists: a reader that read the row before a write and puts
it after the write's drop finds the marker and writes nothing, instead of caching the old value.

Redis is never needed: when it is down or slow,
``get`` misses, ``put`` and ``drop`` do nothing, and the server keeps answering from PostgreSQL.
After a failure the cache stays out of the way for ``pause_seconds`` so that calls do not each
wait for Redis's timeout. Values also expire after ``ttl_seconds``, which bounds how long a
value can outlive a ``drop`` that Redis missed while it was unreachable.
"""

import hashlib
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from servers.runtime.settings import place

log = logging.getLogger(__name__)
DROP_MARKER_SECONDS = 5  # longer than any read of a row takes


def cache_prefix(schema: str, postgres_url: str) -> str:
    """Keys of one server's cache of one database: ``crm:1a2b3c4d:``.

    Two databases cached in one Redis (tests, staging beside dev) never read each other's keys.
    """
    return f"{schema}:{hashlib.sha256(place(postgres_url).encode()).hexdigest()[:8]}:"


class ReadCache:
    def __init__(self, url: str, prefix: str, ttl_seconds: int, pause_seconds: float = 2.0) -> None:
        self.redis: Redis = Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
        )
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.pause_seconds = pause_seconds
        self._paused_until = 0.0

    def _usable(self) -> bool:
        return time.monotonic() >= self._paused_until

    def _failed(self, exc: Exception) -> None:
        if self._usable():
            log.warning("cache unavailable, reading from PostgreSQL: %s", exc)
        self._paused_until = time.monotonic() + self.pause_seconds

    async def get(self, key: str) -> bytes | None:
        if not self._usable():
            return None
        try:
            value: bytes | None = await self.redis.get(self.prefix + key)
            return value or None  # b"" is a drop's marker
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None

    async def put(self, key: str, value: str | bytes) -> None:
        if not self._usable():
            return
        try:
            await self.redis.set(self.prefix + key, value, ex=self.ttl_seconds, nx=True)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def drop(self, *keys: str) -> None:
        """Forget ``keys``; tried even while paused, since a stale value is worse than a wait."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(self.prefix + key, b"", ex=DROP_MARKER_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def drop_all(self) -> None:
        """Forget every key under this cache's prefix (after a bulk load)."""
        try:
            async for key in self.redis.scan_iter(match=self.prefix + "*", count=1000):
                await self.redis.unlink(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        await self.redis.aclose()
