"""The memory server's periodic task: turn idle sessions into long-term interaction summaries.

A session whose last turn is older than ``session_idle_seconds`` has ended; Celery beat sends
``memory.consolidate_idle`` every ``memory_sweep_seconds`` and a worker in the server's process
(Qdrant's local store admits one process) summarises each such session — extractively, the
same way every time, with no model — and remembers the summary as an ``interaction_summary``.
Safe to run twice: the summary's idempotency key names the session and its turn count.
"""

import asyncio
import logging
import math
import re
import time
from collections import Counter

from redis.asyncio import Redis

from schemas.memory import MemoryKind, Speaker, Turn
from schemas.roles import ROLE_SCOPES, Role
from servers.memory import store
from servers.memory.sessions import Sessions
from servers.runtime.auth import Caller
from servers.runtime.cache import cache_prefix
from servers.runtime.database import open_pool
from servers.runtime.embeddings import embedding_model
from servers.runtime.keys import joined_key
from servers.runtime.settings import Settings
from servers.runtime.tasks import Schedule, task_settings, tasks
from servers.runtime.vectors import open_vectors

log = logging.getLogger(__name__)
SCHEMA = "memory"
SWEEP_TASK = "memory.consolidate_idle"
CONSOLIDATION = Caller(
    actor="system:memory-consolidation", scopes=frozenset(ROLE_SCOPES[Role.ADMIN])
)
SENTENCE = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[a-z0-9']+")
STOPWORDS = frozenset(
    """a an and are as at be but by can could did do does for from had has have hello hi how i
    i'm if in is it it's me my no not of on or our please so that the their them then there
    they this to was we were what when which will with would yes you your thanks thank""".split()  # noqa: SIM905
)


def schedule(settings: Settings) -> Schedule:
    """Celery beat's entry: ``memory.consolidate_idle`` every ``memory_sweep_seconds``."""
    return {SWEEP_TASK: {"task": SWEEP_TASK, "schedule": settings.memory_sweep_seconds}}


def summarize(session_id: str, turns: list[Turn], limit: int = 1200) -> str:
    """An extractive summary: the customer's most telling sentences and the agent's last word.

    Sentences score by how often their content words occur across the conversation (per word,
    so long sentences do not win by length); ties go to the earlier sentence.
    """
    words = Counter(w for t in turns for w in WORD.findall(t.text.lower()) if w not in STOPWORDS)

    def score(sentence: str) -> float:
        content = [w for w in WORD.findall(sentence.lower()) if w not in STOPWORDS]
        total: float = sum(words[w] for w in content)
        return total / math.sqrt(len(content) or 1)

    said = [
        (i, s)
        for i, t in enumerate(turns)
        if t.speaker is Speaker.CUSTOMER
        for s in SENTENCE.split(t.text.strip())
        if s
    ]
    best = sorted(sorted(said, key=lambda p: -score(p[1]))[:3])
    agent = [t.text.strip() for t in turns if t.speaker is Speaker.AGENT]
    day = turns[0].at.date().isoformat()
    parts = [f"Conversation {session_id} on {day} ({len(turns)} turns)."]
    if best:
        parts.append("Customer: " + " ".join(s for _, s in best))
    if agent:
        parts.append("Agent (last reply): " + SENTENCE.split(agent[-1])[0])
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sessions_of(settings: Settings, redis: Redis) -> Sessions:
    assert settings.postgres_url
    return Sessions(
        redis=redis,
        prefix=cache_prefix(SCHEMA, settings.postgres_url),
        max_turns=settings.session_max_turns,
        ttl_seconds=settings.session_ttl_seconds,
    )


async def consolidate_idle() -> int:
    """Summarise every session idle for ``session_idle_seconds``; how many were summarised."""
    settings = task_settings()
    assert settings.postgres_url and settings.redis_url
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    pool = await open_pool(settings.postgres_url, SCHEMA, max_size=2)
    try:
        memory = store.LongTermMemory(
            pool, open_vectors(settings), embedding_model(settings.embedding_model)
        )
        sessions = sessions_of(settings, redis)
        done = 0
        idle = await sessions.idle_since(time.time() - settings.session_idle_seconds)
        for customer_id, session_id, last in idle:
            turns = await sessions.all_turns(customer_id, session_id)
            if turns:
                last_turn = str(turns[-1].at)
                await store.remember(
                    memory,
                    CONSOLIDATION,
                    customer_id,
                    summarize(session_id, turns),
                    MemoryKind.INTERACTION_SUMMARY,
                    f"session:{session_id}",
                    joined_key("consolidate", customer_id, session_id, len(turns), last_turn),
                )
                done += 1
            await sessions.settled(customer_id, session_id, last)
        return done
    finally:
        await pool.close()
        await redis.aclose()


@tasks.task(name=SWEEP_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def consolidate_idle_sessions() -> int:
    done = asyncio.run(consolidate_idle())
    if done:
        log.info("consolidated %d idle sessions", done)
    return done
