"""Articles and ingestion jobs in PostgreSQL (schema ``knowledge``).

``store_articles`` writes the articles of one ingest call and its job in one transaction and
says which articles need indexing: new ones and changed ones (by content hash). Unchanged ones
are counted and left alone. The tasks that index them (``tasks.py``) mark each job item done or
failed; a job's progress is read from its items.
"""

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from schemas.events import Topic
from schemas.knowledge import (
    Article,
    ArticlePage,
    ArticleSummary,
    DeletedArticle,
    IngestJob,
    JobStatus,
    NewArticle,
)
from servers.knowledge.index import index_key
from servers.runtime.auth import Caller
from servers.runtime.database import Pool
from servers.runtime.errors import InvalidArgument, NotFound
from servers.runtime.pages import decode_cursor, encode_cursor
from servers.runtime.writes import Write, perform_write

SOURCE = "supportmesh/knowledge"


def content_hash(article: NewArticle, source: str) -> str:
    """What a passage's payload is made of: a change to any of it means indexing again."""
    canonical = json.dumps([article.title, article.body, sorted(article.tags), source])
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ToIndex:
    job_id: str
    article_id: str
    content_hash: str


UPSERT = """
INSERT INTO articles (id, title, body, tags, source, content_hash)
VALUES (%(id)s, %(title)s, %(body)s, %(tags)s, %(source)s, %(hash)s)
ON CONFLICT (id) DO UPDATE SET
    title = EXCLUDED.title, body = EXCLUDED.body, tags = EXCLUDED.tags, source = EXCLUDED.source,
    content_hash = EXCLUDED.content_hash, version = articles.version + 1, updated_at = now()
WHERE articles.content_hash IS DISTINCT FROM EXCLUDED.content_hash
   OR articles.source IS DISTINCT FROM EXCLUDED.source
"""
# An article needs indexing unless it is stored with this content and indexed as such (an
# earlier ingest whose tasks never ran, say because Redis was down, is indexed again).
INDEXED = "SELECT content_hash, indexed_hash FROM articles WHERE id = %s FOR UPDATE"

JOB = """
SELECT j.id::text AS id, j.source, j.total, j.unchanged, j.created_at,
       count(*) FILTER (WHERE i.state = 'done') AS indexed,
       count(*) FILTER (WHERE i.state = 'failed') AS failed,
       count(*) FILTER (WHERE i.state = 'pending') AS pending,
       coalesce(array_agg(i.article_id || ': ' || i.error ORDER BY i.article_id)
                FILTER (WHERE i.state = 'failed'), '{}') AS errors,
       max(i.finished_at) AS finished_at
FROM ingest_jobs j LEFT JOIN ingest_items i ON i.job_id = j.id
WHERE j.id = %s
GROUP BY j.id
"""


def _job(row: dict[str, Any]) -> IngestJob:
    pending = row.pop("pending")
    status = (
        JobStatus.RUNNING if pending else (JobStatus.FAILED if row["failed"] else JobStatus.DONE)
    )
    finished = None if pending else (row["finished_at"] or row["created_at"])
    return IngestJob(**{**row, "status": status, "finished_at": finished})


async def store_articles(
    pool: Pool,
    caller: Caller,
    articles: list[NewArticle],
    source: str,
    idempotency_key: str | None,
) -> tuple[IngestJob, list[ToIndex]]:
    """Store the articles and open a job; return it and what its tasks must index."""
    ids = [a.id for a in articles]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InvalidArgument("articles", f"article {duplicate} appears twice")

    async def change(write: Write) -> IngestJob:
        job_id = str(uuid.uuid4())
        changed: list[str] = []
        # In id order, so that two ingests of the same articles lock them in the same order.
        for article in sorted(articles, key=lambda a: a.id):
            digest = content_hash(article, source)
            cur = await write.conn.execute(INDEXED, [article.id])
            stored = await cur.fetchone()
            if (
                stored is not None
                and stored["content_hash"] == digest
                and stored["indexed_hash"] == index_key(digest)
            ):
                continue
            changed.append(article.id)
            await write.conn.execute(
                UPSERT,
                {
                    "id": article.id,
                    "title": article.title,
                    "body": article.body,
                    "tags": article.tags,
                    "source": source,
                    "hash": digest,
                },
            )
        await write.conn.execute(
            "INSERT INTO ingest_jobs (id, source, total, unchanged) VALUES (%s, %s, %s, %s)",
            [job_id, source, len(articles), len(articles) - len(changed)],
        )
        for article in articles:
            if article.id in changed:
                await write.conn.execute(
                    "INSERT INTO ingest_items (job_id, article_id, content_hash) "
                    "VALUES (%s, %s, %s)",
                    [job_id, article.id, content_hash(article, source)],
                )
        write.emit(
            Topic.AGENT_ACTIONS,
            "kb.articles_ingested",
            f"ingest/{job_id}",
            {"job_id": job_id, "source": source, "articles": ids, "changed": changed},
        )
        row = await (await write.conn.execute(JOB, [job_id])).fetchone()
        assert row is not None
        return _job(dict(row))

    job = await perform_write(
        pool,
        source=SOURCE,
        tool="ingest_articles",
        caller=caller,
        arguments={
            "articles": [a.model_dump() for a in articles],
            "source": source,
        },
        idempotency_key=idempotency_key,
        result_type=IngestJob,
        change=change,
    )
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT article_id, content_hash FROM ingest_items "
            "WHERE job_id = %s AND state = 'pending'",
            [job.id],
        )
        pending = [
            ToIndex(job.id, r["article_id"], r["content_hash"]) for r in await cur.fetchall()
        ]
    return job, pending


async def stalled_items(pool: Pool, job_id: str, older_than_seconds: float) -> list[ToIndex]:
    """Items of the job still pending after ``older_than_seconds`` since they were sent; they
    are marked as sent now (the caller sends them again; indexing twice is harmless)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """UPDATE ingest_items SET queued_at = now()
               WHERE job_id = %s AND state = 'pending'
                 AND queued_at < now() - make_interval(secs => %s)
               RETURNING article_id, content_hash""",
            [job_id, older_than_seconds],
        )
        return [ToIndex(job_id, r["article_id"], r["content_hash"]) for r in await cur.fetchall()]


async def get_job(pool: Pool, job_id: str) -> IngestJob:
    try:
        uuid.UUID(job_id)
    except ValueError as exc:
        raise InvalidArgument("job_id", "not a job id returned by ingest_articles") from exc
    async with pool.connection() as conn:
        row = await (await conn.execute(JOB, [job_id])).fetchone()
    if row is None:
        raise NotFound("job_id", f"no ingest job {job_id}")
    return _job(dict(row))


ARTICLE_COLUMNS = "id, title, body, tags, source, content_hash, version, created_at, updated_at"


async def get_article(pool: Pool, article_id: str) -> Article:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {ARTICLE_COLUMNS} FROM articles WHERE id = %s", [article_id]
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound("article_id", f"no article {article_id}")
    return Article.model_validate(row)


async def list_articles(
    pool: Pool, source: str | None, tag: str | None, limit: int, cursor: str | None
) -> ArticlePage:
    asked = {"source": source, "tag": tag}
    after = decode_cursor(cursor, asked, "list_articles", (str,))[0] if cursor else ""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT id, title, tags, source, version, updated_at FROM articles
               WHERE id > %s AND (%s::text IS NULL OR source = %s)
                 AND (%s::text IS NULL OR %s = ANY(tags))
               ORDER BY id LIMIT %s""",
            [after, source, source, tag, tag, limit + 1],
        )
        rows = await cur.fetchall()
    page = [ArticleSummary.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor([page[-1].id], asked) if len(rows) > limit else None
    return ArticlePage(articles=page, next_cursor=next_cursor)


async def _key_used(pool: Pool, idempotency_key: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT 1 FROM idempotency_keys WHERE tool = 'delete_article' AND key = %s",
            [idempotency_key],
        )
        return await cur.fetchone() is not None


async def delete_article(
    pool: Pool,
    caller: Caller,
    article_id: str,
    remove_chunks: Callable[[str], Awaitable[int]],
    idempotency_key: str | None,
) -> DeletedArticle:
    """Delete the article from PostgreSQL and its chunks from Qdrant, together.

    First the article is marked as not indexed, and that commits: from then on, whatever fails,
    the article is either gone or will be indexed again by the next ingest (never counted as
    unchanged while its chunks are missing). Then, in one transaction, the row is locked (an
    indexing task waits), its chunks are removed, and the row is deleted.
    """
    if idempotency_key is None or not await _key_used(pool, idempotency_key):
        async with pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE articles SET indexed_hash = NULL WHERE id = %s RETURNING id", [article_id]
            )
            if await cur.fetchone() is None:
                raise NotFound("article_id", f"no article {article_id}")

    async def change(write: Write) -> DeletedArticle:
        cur = await write.conn.execute(
            "SELECT id FROM articles WHERE id = %s FOR UPDATE", [article_id]
        )
        if await cur.fetchone() is None:
            raise NotFound("article_id", f"no article {article_id}")
        await write.conn.execute("DELETE FROM ingest_items WHERE article_id = %s", [article_id])
        await write.conn.execute("DELETE FROM articles WHERE id = %s", [article_id])
        removed = await remove_chunks(article_id)
        write.emit(
            Topic.AGENT_ACTIONS,
            "kb.article_deleted",
            f"article/{article_id}",
            {"article_id": article_id, "chunks_removed": removed},
        )
        return DeletedArticle(id=article_id, chunks_removed=removed)

    return await perform_write(
        pool,
        source=SOURCE,
        tool="delete_article",
        caller=caller,
        arguments={"article_id": article_id},
        idempotency_key=idempotency_key,
        result_type=DeletedArticle,
        change=change,
    )
