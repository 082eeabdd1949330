"""Long-term memory: rows in PostgreSQL (the record), vectors in Qdrant (for recall).

Every memory is a row in ``memory.memories`` and a point in the ``customer_memory`` collection
with the same id. ``remember`` writes both in one PostgreSQL transaction (the point first: if
Qdrant fails nothing is kept). ``recall`` searches Qdrant with a filter on the customer that
the caller cannot change, then reads the rows back from PostgreSQL for that customer only, so
a point without its row (a write that failed after Qdrant) is never returned.

Results kept for retries and audit (``Remembered``, ``ErasureReceipt``) never hold the text.
"""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from model2vec import StaticModel
from qdrant_client import models

from schemas.events import Topic
from schemas.memory import (
    ErasureReceipt,
    Memory,
    MemoryKind,
    MemoryPage,
    Recalled,
    RecallHit,
    Remembered,
)
from servers.memory.sessions import Sessions
from servers.runtime.auth import Caller
from servers.runtime.database import Pool
from servers.runtime.embeddings import embed
from servers.runtime.pages import decode_cursor, encode_cursor
from servers.runtime.vectors import Vectors, ensure_collection
from servers.runtime.writes import Write, perform_write

SOURCE = "memory"
COLLECTION = "customer_memory"
COLUMNS = "id::text AS id, customer_id, kind, text, source, created_at"


@dataclass
class LongTermMemory:
    pool: Pool
    vectors: Vectors
    model: StaticModel

    def ensure_collection(self) -> None:
        ensure_collection(
            self.vectors,
            COLLECTION,
            ("customer_id", "kind"),
            models.VectorParams(size=self.model.dim, distance=models.Distance.COSINE),
        )

    def _upsert(self, memory_id: str, customer_id: str, kind: MemoryKind, text: str) -> None:
        point = models.PointStruct(
            id=memory_id,
            vector=embed(self.model, [text])[0],
            payload={"customer_id": customer_id, "kind": kind.value},
        )
        with self.vectors.lock:
            self.vectors.client.upsert(COLLECTION, points=[point], wait=True)

    def _search(self, customer_id: str, query: str, k: int, kind: MemoryKind | None) -> list[Any]:
        # The customer condition is built here, from the validated customer id alone.
        must: list[models.Condition] = [
            models.FieldCondition(key="customer_id", match=models.MatchValue(value=customer_id))
        ]
        if kind is not None:
            must.append(models.FieldCondition(key="kind", match=models.MatchValue(value=kind)))
        vector = embed(self.model, [query])[0]
        with self.vectors.lock:
            return self.vectors.client.query_points(
                COLLECTION, query=vector, query_filter=models.Filter(must=must), limit=k
            ).points

    def _forget(self, customer_id: str) -> int:
        only = models.Filter(
            must=[
                models.FieldCondition(key="customer_id", match=models.MatchValue(value=customer_id))
            ]
        )
        with self.vectors.lock:
            client = self.vectors.client
            count = client.count(COLLECTION, count_filter=only, exact=True).count
            client.delete(COLLECTION, points_selector=models.FilterSelector(filter=only), wait=True)
        return count


async def remember(
    memory: LongTermMemory,
    caller: Caller,
    customer_id: str,
    text: str,
    kind: MemoryKind,
    source: str,
    idempotency_key: str | None,
) -> Remembered:
    async def change(write: Write) -> Remembered:
        memory_id = str(uuid.uuid4())
        await asyncio.to_thread(memory._upsert, memory_id, customer_id, kind, text)
        cur = await write.conn.execute(
            "INSERT INTO memories (id, customer_id, kind, text, source) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id::text AS id, customer_id, kind, created_at",
            [memory_id, customer_id, kind.value, text, source],
        )
        remembered = Remembered.model_validate(await cur.fetchone())
        write.emit(
            Topic.AGENT_ACTIONS,
            "memory.remembered",
            f"customer/{customer_id}",
            {"memory_id": memory_id, "customer_id": customer_id, "kind": kind.value},
        )
        return remembered

    return await perform_write(
        memory.pool,
        source=SOURCE,
        tool="remember",
        caller=caller,
        arguments={"customer_id": customer_id, "text": text, "kind": kind, "source": source},
        idempotency_key=idempotency_key,
        result_type=Remembered,
        change=change,
    )


async def recall(
    memory: LongTermMemory, customer_id: str, query: str, k: int, kind: MemoryKind | None
) -> Recalled:
    points = await asyncio.to_thread(memory._search, customer_id, query, k, kind)
    scores = {str(p.id): p.score for p in points}
    async with memory.pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE customer_id = %s AND id = ANY(%s::uuid[])",
            [customer_id, list(scores)],
        )
        rows = {row["id"]: Memory.model_validate(row) for row in await cur.fetchall()}
    hits = [RecallHit(memory=rows[i], score=s) for i, s in scores.items() if i in rows]
    return Recalled(customer_id=customer_id, hits=hits)


async def list_memories(
    pool: Pool, customer_id: str, kind: MemoryKind | None, limit: int, cursor: str | None
) -> MemoryPage:
    query = {"customer_id": customer_id, "kind": kind}
    where, params = ["customer_id = %s"], [customer_id]
    if kind is not None:
        where.append("kind = %s")
        params.append(kind.value)
    if cursor is not None:
        where.append("(created_at, id) > (%s, %s)")
        params += decode_cursor(cursor, query, "list_memories", (datetime.fromisoformat, uuid.UUID))
    sql = (
        f"SELECT {COLUMNS} FROM memories WHERE {' AND '.join(where)} "
        "ORDER BY created_at, id LIMIT %s"
    )
    async with pool.connection() as conn:
        rows = await (await conn.execute(sql, [*params, limit + 1])).fetchall()
    page = [Memory.model_validate(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor([page[-1].created_at.isoformat(), page[-1].id], query)
    return MemoryPage(memories=page, next_cursor=next_cursor)


async def forget_customer(
    memory: LongTermMemory,
    sessions: Sessions,
    caller: Caller,
    customer_id: str,
    idempotency_key: str | None,
) -> ErasureReceipt:
    """Erase the customer's memory from PostgreSQL, Qdrant and Redis, in one transaction as far
    as PostgreSQL goes: if a store fails, the rows stay and a retry erases the rest."""

    async def change(write: Write) -> ErasureReceipt:
        cur = await write.conn.execute("DELETE FROM memories WHERE customer_id = %s", [customer_id])
        memories_removed = cur.rowcount
        # Earlier results of remember kept for retries name the customer: they go too.
        await write.conn.execute(
            "DELETE FROM idempotency_keys WHERE result->>'customer_id' = %s", [customer_id]
        )
        vectors_removed = await asyncio.to_thread(memory._forget, customer_id)
        sessions_removed, turns_removed = await sessions.forget(customer_id)
        write.emit(
            Topic.AGENT_ACTIONS,
            "memory.customer_forgotten",
            f"customer/{customer_id}",
            {"customer_id": customer_id},
        )
        return ErasureReceipt(
            customer_id=customer_id,
            sessions_removed=sessions_removed,
            turns_removed=turns_removed,
            memories_removed=memories_removed,
            vectors_removed=vectors_removed,
            erased_at=datetime.now(UTC),
        )

    return await perform_write(
        memory.pool,
        source=SOURCE,
        tool="forget_customer",
        caller=caller,
        arguments={"customer_id": customer_id},
        idempotency_key=idempotency_key,
        result_type=ErasureReceipt,
        change=change,
    )
