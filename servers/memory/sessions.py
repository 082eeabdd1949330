"""Session memory in Redis: the turns of a conversation, bounded and expiring.

Keys (under the environment's prefix, see ``cache_prefix``; ids percent-encoded by
``joined_key``, so that customer ``A:chat`` can never reach customer ``A``'s session ``chat:42``):

- ``session:<customer>:<session>``  list of turns (JSON), the newest last, at most
  ``session_max_turns``, expiring ``session_ttl_seconds`` after the last append;
- ``sessions``                      sorted set of [customer, session] by last append time: what
  the consolidation sweep looks at;
- ``customer:<customer>``           set of the customer's session ids, for erasure;
- ``appended:<customer>``           hash of the customer's idempotency keys -> arguments digest,
  expiring with their last session.

An append is one Lua script: its turn, trim, expiry, index entries and idempotency key are all
written or none is.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas.memory import Session, SessionAppended, Speaker, Turn
from servers.runtime.errors import Conflict, Unavailable
from servers.runtime.keys import joined_key

APPEND = """
-- KEYS: turns, index, customer set, customer's idempotency keys
-- ARGV: turn, max turns, ttl, index member, score, session id, arguments digest, key ('' = none)
if ARGV[8] ~= '' then
  local seen = redis.call('HGET', KEYS[4], ARGV[8])
  if seen then
    if seen ~= ARGV[7] then return {-1, 0} end
    return {redis.call('LLEN', KEYS[1]), redis.call('TTL', KEYS[1])}
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[3])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[8], ARGV[7])
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return {redis.call('LLEN', KEYS[1]), tonumber(ARGV[3])}
"""


def member(customer_id: str, session_id: str) -> str:
    return json.dumps([customer_id, session_id])


@dataclass
class Sessions:
    redis: Redis  # with decode_responses=True
    prefix: str
    max_turns: int
    ttl_seconds: int

    def turns_key(self, customer_id: str, session_id: str) -> str:
        return self.prefix + joined_key("session", customer_id, session_id)

    @property
    def index_key(self) -> str:
        return f"{self.prefix}sessions"

    def customer_key(self, customer_id: str) -> str:
        return self.prefix + joined_key("customer", customer_id)

    def appended_key(self, customer_id: str) -> str:
        return self.prefix + joined_key("appended", customer_id)

    async def append(
        self,
        customer_id: str,
        session_id: str,
        speaker: Speaker,
        text: str,
        idempotency_key: str | None,
        digest: str,
    ) -> SessionAppended:
        at = datetime.now(UTC)
        turn = Turn(speaker=speaker, text=text, at=at).model_dump_json()
        keys = [
            self.turns_key(customer_id, session_id),
            self.index_key,
            self.customer_key(customer_id),
            self.appended_key(customer_id),
        ]
        args: list[str | int | float] = [
            turn,
            self.max_turns,
            self.ttl_seconds,
            member(customer_id, session_id),
            at.timestamp(),
            session_id,
            digest,
            idempotency_key or "",
        ]
        try:
            total, ttl = await self.redis.eval(APPEND, len(keys), *keys, *args)  # type: ignore[misc]
        except RedisError as exc:
            raise Unavailable(None, f"session memory (Redis) unavailable: {exc}") from exc
        if total == -1:
            raise Conflict("idempotency_key", "already used for a call with other arguments")
        return SessionAppended(
            customer_id=customer_id,
            session_id=session_id,
            total_turns=int(total),
            expires_in_seconds=max(int(ttl), 0),
        )

    async def read(self, customer_id: str, session_id: str, last: int) -> Session:
        key = self.turns_key(customer_id, session_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrange(key, -last, -1)
                pipe.llen(key)
                pipe.ttl(key)
                raw, total, ttl = await pipe.execute()
        except RedisError as exc:
            raise Unavailable(None, f"session memory (Redis) unavailable: {exc}") from exc
        return Session(
            customer_id=customer_id,
            session_id=session_id,
            turns=[Turn.model_validate_json(t) for t in raw],
            total_turns=total,
            expires_in_seconds=ttl if ttl >= 0 else None,
        )

    async def all_turns(self, customer_id: str, session_id: str) -> list[Turn]:
        raw = await self.redis.lrange(self.turns_key(customer_id, session_id), 0, -1)  # type: ignore[misc]
        return [Turn.model_validate_json(t) for t in raw]

    async def idle_since(self, before: float, limit: int = 100) -> list[tuple[str, str, float]]:
        """Sessions whose last turn is older than ``before`` (a Unix time): customer, session,
        last-append score."""
        found: list[tuple[Any, float]] = await self.redis.zrangebyscore(
            self.index_key, "-inf", before, start=0, num=limit, withscores=True
        )
        return [(*json.loads(m), score) for m, score in found]

    async def settled(self, customer_id: str, session_id: str, score: float) -> None:
        """Drop a consolidated session from the sweep's index, unless a turn came since."""
        script = """
        if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) == tonumber(ARGV[2]) then
          return redis.call('ZREM', KEYS[1], ARGV[1])
        end
        return 0
        """
        await self.redis.eval(  # type: ignore[misc]
            script, 1, self.index_key, member(customer_id, session_id), repr(score)
        )

    async def forget(self, customer_id: str) -> tuple[int, int]:
        """Remove every session of the customer; (sessions, turns) removed."""
        try:
            key = self.customer_key(customer_id)
            session_ids: list[str] = sorted(await self.redis.smembers(key))  # type: ignore[misc]
            async with self.redis.pipeline(transaction=True) as pipe:
                for session_id in session_ids:
                    pipe.llen(self.turns_key(customer_id, session_id))
                counts = await pipe.execute()
            turns = sum(counts)
            async with self.redis.pipeline(transaction=True) as pipe:
                for session_id in session_ids:
                    pipe.delete(self.turns_key(customer_id, session_id))
                    pipe.zrem(self.index_key, member(customer_id, session_id))
                pipe.delete(self.customer_key(customer_id), self.appended_key(customer_id))
                await pipe.execute()
        except RedisError as exc:
            raise Unavailable(None, f"session memory (Redis) unavailable: {exc}") from exc
        live = sum(1 for c in counts if c)
        return live, turns
