"""The knowledge server's Celery tasks: index one article of an ingest job into Qdrant, and
send again the tasks of items left pending too long.

Safe to run twice: it reads the article as stored now, writes points whose ids come from the
article's content, and marks its job item only while it is still pending. It holds a share lock
on the article while indexing, so a concurrent ``delete_article`` waits (and cannot leave
chunks of a deleted article behind). Backends that are down are retried with exponential
backoff; an article that cannot be indexed marks its item failed, with the reason.
"""

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from servers.knowledge.index import KnowledgeIndex, index_key
from servers.runtime.embeddings import embedding_model
from servers.runtime.settings import Settings
from servers.runtime.tasks import Schedule, task_settings, tasks
from servers.runtime.vectors import open_vectors

log = logging.getLogger(__name__)
SCHEMA = "knowledge"
RETRYABLE = (psycopg.OperationalError, ResponseHandlingException, UnexpectedResponse, OSError)


def _index() -> KnowledgeIndex:
    settings = task_settings()
    index = KnowledgeIndex(open_vectors(settings), embedding_model(settings.embedding_model))
    index.ensure_collection()
    return index


def _connect() -> psycopg.Connection[dict[str, Any]]:
    url = task_settings().postgres_url
    assert url
    return psycopg.connect(url, options=f"-c search_path={SCHEMA}", row_factory=dict_row)


STALE = "stale"  # articles.indexed_hash of an article whose points are being replaced
FINISH = """
UPDATE ingest_items SET state = %s, error = %s, finished_at = now()
WHERE job_id = %s AND article_id = %s AND state = 'pending'
"""


def index_article_now(job_id: str, article_id: str, content_hash: str) -> str:
    """Index the article if it still has this content; mark the job item. Returns what it did."""
    key = index_key(content_hash)
    with _connect() as conn:
        # Before Qdrant changes, say it is no longer known to match: if this task dies between
        # the two, the next ingest indexes the article again instead of finding it unchanged.
        # Not NULL, which means never indexed: this article may have points to remove.
        conn.execute(
            "UPDATE articles SET indexed_hash = %s WHERE id = %s AND content_hash = %s "
            "AND indexed_hash IS DISTINCT FROM %s AND indexed_hash IS NOT NULL",
            [STALE, article_id, content_hash, key],
        )
        conn.commit()
    with _connect() as conn, conn.transaction():
        row = conn.execute(
            "SELECT title, body, tags, source, content_hash, indexed_hash, version FROM articles "
            "WHERE id = %s FOR SHARE",
            [article_id],
        ).fetchone()
        if row is None:
            conn.execute(FINISH, ["failed", "deleted before it was indexed", job_id, article_id])
            return "deleted"
        if row["content_hash"] != content_hash:  # changed again; a later job indexes it
            conn.execute(FINISH, ["done", None, job_id, article_id])
            return "superseded"
        if row["indexed_hash"] != key:
            chunks = _index().replace_article(
                article_id,
                row["title"],
                row["body"],
                row["tags"],
                row["source"],
                key,
                # Never indexed and never changed: no chunks of other content or of another
                # INDEX_VERSION can exist. (A task that died after writing this content's points
                # left points of the same ids.)
                first_time=row["indexed_hash"] is None and row["version"] == 1,
            )
            conn.execute(
                "UPDATE articles SET indexed_hash = %s, chunks = %s WHERE id = %s",
                [key, chunks, article_id],
            )
        conn.execute(FINISH, ["done", None, job_id, article_id])
        return "indexed"


def _fail(job_id: str, article_id: str, reason: str) -> None:
    with _connect() as conn:
        conn.execute(FINISH, ["failed", reason[:500], job_id, article_id])


@tasks.task(bind=True, name="knowledge.index_article", max_retries=8)  # type: ignore[untyped-decorator]
def index_article(self: Any, job_id: str, article_id: str, content_hash: str) -> str:
    try:
        return index_article_now(job_id, article_id, content_hash)
    except RETRYABLE as exc:
        if self.request.retries >= self.max_retries:
            _fail(job_id, article_id, f"backend unavailable: {exc}")
            return "failed"
        log.warning("index %s: %s; retrying", article_id, exc)
        # Under half the visibility timeout, or the waiting task is handed out a second time.
        ceiling = max(1, task_settings().task_visibility_timeout_seconds // 2)
        raise self.retry(exc=exc, countdown=min(ceiling, 2**self.request.retries)) from exc
    except Exception as exc:  # a problem with the article itself: retrying will not help
        log.exception("index %s failed", article_id)
        _fail(job_id, article_id, f"{type(exc).__name__}: {exc}")
        return "failed"


RESEND_TASK = "knowledge.resend_stale"
STALE_ITEMS = """
UPDATE ingest_items SET sent_at = now()
WHERE (job_id, article_id) IN (
    SELECT job_id, article_id FROM ingest_items
    WHERE state = 'pending' AND sent_at < now() - make_interval(secs => %s)
    ORDER BY sent_at LIMIT 500 FOR UPDATE SKIP LOCKED
)
RETURNING job_id::text, article_id, content_hash
"""


def schedule(settings: Settings) -> Schedule:
    """Celery beat's entry: ``knowledge.resend_stale`` twice every ``ingest_stale_seconds``."""
    return {RESEND_TASK: {"task": RESEND_TASK, "schedule": settings.ingest_stale_seconds / 2}}


def resend_stale_now() -> int:
    """Send the index task again for every item pending longer than ``ingest_stale_seconds``
    since its task was last sent (a task lost with a broker that forgot it, or dropped after
    its retries); how many were sent. Indexing twice is harmless."""
    with _connect() as conn:
        stale = conn.execute(STALE_ITEMS, [task_settings().ingest_stale_seconds]).fetchall()
        conn.commit()
    for item in stale:
        index_article.delay(item["job_id"], item["article_id"], item["content_hash"])
    return len(stale)


@tasks.task(name=RESEND_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def resend_stale_ingests() -> int:
    sent = resend_stale_now()
    if sent:
        log.warning("sent %d stale ingest items again", sent)
    return sent
