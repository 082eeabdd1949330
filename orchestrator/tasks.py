"""The orchestrator's periodic task: prune the checkpoints of tickets resolved long ago.

LangGraph's PostgreSQL saver keeps every checkpoint of every thread and has no way to drop old
ones (langgraph issue #8531). A resolved ticket needs only its last one (its final state, what
``GET /tickets/{id}`` shows); the earlier ones serve time travel while someone may still debug
the run. Sent by Celery beat every ``checkpoint_prune_seconds``: for tickets resolved more than
``checkpoint_retention_seconds`` ago, it deletes every checkpoint but the last of the thread's
root, the pending writes of those, the subgraphs' checkpoints, and the channel values the last
checkpoint no longer refers to. Paused and running threads are never touched.

Safe to run twice or in two workers at once: each batch of tickets is locked (``SKIP LOCKED``)
and pruned in one statement with its ``pruned_at`` mark.
"""

import logging

import psycopg

from servers.runtime.settings import Settings
from servers.runtime.tasks import Schedule, task_settings, tasks

log = logging.getLogger(__name__)
SCHEMA = "orchestrator"
PRUNE_TASK = "orchestrator.prune_checkpoints"
BATCH = 200


def schedule(settings: Settings) -> Schedule:
    """Celery beat's entry: ``orchestrator.prune_checkpoints``, every
    ``checkpoint_prune_seconds``."""
    return {PRUNE_TASK: {"task": PRUNE_TASK, "schedule": settings.checkpoint_prune_seconds}}


PRUNE = """
WITH done AS (
    SELECT ticket_id, ticket_id::text AS thread_id FROM runs
    WHERE status = 'resolved' AND pruned_at IS NULL
      AND finished_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY finished_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), latest AS (
    SELECT DISTINCT ON (c.thread_id) c.thread_id, c.checkpoint_id, c.checkpoint
    FROM checkpoints c JOIN done USING (thread_id)
    WHERE c.checkpoint_ns = ''
    ORDER BY c.thread_id, c.checkpoint_id DESC
), dropped_checkpoints AS (
    DELETE FROM checkpoints c USING done
    WHERE c.thread_id = done.thread_id AND NOT EXISTS (
        SELECT 1 FROM latest l WHERE c.checkpoint_ns = ''
          AND l.thread_id = c.thread_id AND l.checkpoint_id = c.checkpoint_id)
), dropped_writes AS (
    DELETE FROM checkpoint_writes w USING done
    WHERE w.thread_id = done.thread_id AND NOT EXISTS (
        SELECT 1 FROM latest l WHERE w.checkpoint_ns = ''
          AND l.thread_id = w.thread_id AND l.checkpoint_id = w.checkpoint_id)
), dropped_blobs AS (
    DELETE FROM checkpoint_blobs b USING done
    WHERE b.thread_id = done.thread_id AND NOT EXISTS (
        SELECT 1 FROM latest l WHERE b.checkpoint_ns = '' AND l.thread_id = b.thread_id
          AND l.checkpoint -> 'channel_versions' ->> b.channel = b.version)
)
UPDATE runs SET pruned_at = now() FROM done WHERE runs.ticket_id = done.ticket_id
"""
FORGET_EVENTS = """
    DELETE FROM consumed_events WHERE consumed_at < now() - make_interval(secs => %s)
"""


def prune(postgres_url: str, older_than_seconds: float) -> int:
    """Prune every ticket resolved more than ``older_than_seconds`` ago; how many were."""
    pruned = 0
    with psycopg.connect(postgres_url, autocommit=True, options=f"-c search_path={SCHEMA}") as conn:
        while True:
            with conn.transaction():
                done = conn.execute(
                    PRUNE, {"older_than": older_than_seconds, "batch": BATCH}
                ).rowcount
            pruned += done
            if done < BATCH:
                break
        # Event ids are kept as long as checkpoints: a redelivery comes within minutes.
        conn.execute(FORGET_EVENTS, [max(older_than_seconds, 24 * 3600)])
    return pruned


@tasks.task(name=PRUNE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def prune_checkpoints() -> int:
    settings = task_settings()
    assert settings.postgres_url
    pruned = prune(settings.postgres_url, settings.checkpoint_retention_seconds)
    if pruned:
        log.info("pruned the checkpoints of %d resolved tickets", pruned)
    return pruned
