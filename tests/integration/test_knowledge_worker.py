"""A worker killed during ingestion: the job still completes once its tasks are redelivered.

With Qdrant in local mode the knowledge server runs the Celery worker in its own process, so
the worker is killed by killing that process (SIGKILL: no clean-up at all). A new server on
the same backends takes over; the task that was running is redelivered after the visibility
timeout, the ones still queued are taken as they are, and every article ends up indexed once.
"""

import asyncio
import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from fastmcp import Client

from schemas.roles import Role
from servers.knowledge.index import index_key
from servers.runtime.settings import Settings
from tests.conftest import (
    fresh_database,
    require_shared_data,
    serving,
    supportmesh_env,
    token,
)
from tests.integration.test_ticketing_tools import call

BANKING = require_shared_data() / "tau2" / "banking_knowledge" / "documents"


def other_redis_db(url: str) -> str:
    """The same Redis, another database: this test's tasks stay away from the session's worker."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db - 1 if db > 0 else 1}"))


async def test_a_killed_worker_s_job_completes_after_redelivery(
    backends: Settings, tmp_path: Path
) -> None:
    assert backends.postgres_url and backends.redis_url
    docs = [json.loads(f.read_text()) for f in sorted(BANKING.glob("*.json"))[:300]]
    articles = [{"id": d["id"], "title": d["title"], "body": d["content"]} for d in docs]
    with fresh_database(backends.postgres_url) as database:
        settings = backends.model_copy(
            update={"postgres_url": database, "redis_url": other_redis_db(backends.redis_url)}
        )
        env = supportmesh_env(settings) | {
            "SUPPORTMESH_DATA_DIR": str(tmp_path / "data"),  # a Qdrant store of its own
            "SUPPORTMESH_TASK_VISIBILITY_TIMEOUT_SECONDS": "3",
        }
        with serving("knowledge", env, tmp_path / "first.log") as (first, url):
            async with Client(url, auth=token(settings, Role.ADMIN)) as client:
                job = await call(client, "ingest_articles", articles=articles, source="banking")
                while job["indexed"] < 20:
                    await asyncio.sleep(0.05)
                    job = await call(client, "get_ingest_job", job_id=job["id"])
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        assert job["status"] == "running", "the job finished before the worker was killed"
        killed_at = job["indexed"]

        with serving("knowledge", env, tmp_path / "second.log") as (_, url):
            async with Client(url, auth=token(settings, Role.ADMIN)) as client:
                for _ in range(1200):
                    job = await call(client, "get_ingest_job", job_id=job["id"])
                    if job["status"] != "running":
                        break
                    await asyncio.sleep(0.1)
                assert (job["status"], job["indexed"], job["failed"]) == ("done", 300, 0), job
                hits = (await call(client, "search_articles", query=docs[-1]["title"], k=5))["hits"]
                assert docs[-1]["id"] in [h["article_id"] for h in hits]

        with psycopg.connect(database) as conn:
            rows = conn.execute("SELECT content_hash, indexed_hash FROM knowledge.articles")
            hashes = rows.fetchall()
        assert len(hashes) == 300
        assert all(indexed == index_key(content) for content, indexed in hashes)
        assert killed_at < 300


@pytest.fixture(autouse=True)
def _no_leftover_tasks(backends: Settings) -> Any:
    """Leave the other Redis database as it was found: empty of this test's queue."""
    yield
    import redis

    assert backends.redis_url
    redis.Redis.from_url(other_redis_db(backends.redis_url)).flushdb()
