"""The Celery app every server's background tasks belong to (broker and results: Redis).

Tasks are acknowledged only when they finish (``acks_late``) and given back when their worker
dies, so a task runs at least once: every task must be safe to run twice. A task taken by a
worker that was killed outright returns to the queue after ``task_visibility_timeout_seconds``.

A worker runs either as its own process (``supportmesh worker``), or inside a server's process
(``worker_in_thread``) when the backend its tasks write can be opened by one process only:
Qdrant in local mode.

Each environment has its own queue (``task_queue``), so one Redis can carry the tasks of several
environments — tests beside development, or servers each with a Qdrant local store of their own —
and a worker never takes a task meant for another environment's databases.
"""

import contextlib
import hashlib
import threading
from collections.abc import Iterator

from celery import Celery
from celery.worker import WorkController

from servers.runtime.settings import Settings, place
from servers.runtime.vectors import vectors_location

tasks = Celery("supportmesh", set_as_current=False)


def task_queue(settings: Settings) -> str:
    """The queue of this environment's tasks, ``supportmesh.1a2b3c4d``.

    Named after where tasks write — the PostgreSQL database and Qdrant — so the servers and
    workers of one environment share it and nobody else's worker takes from it.
    """
    assert settings.postgres_url, "start_backends fills in postgres_url"
    where = f"{place(settings.postgres_url)} {vectors_location(settings)}"
    return f"supportmesh.{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def configure_tasks(settings: Settings) -> Celery:
    """Point the app at ``settings``' Redis; call once per process before sending or working."""
    assert settings.redis_url, "start_backends fills in redis_url"
    tasks.conf.update(
        broker_url=settings.redis_url,
        task_default_queue=task_queue(settings),
        result_backend=settings.redis_url,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={
            "visibility_timeout": settings.task_visibility_timeout_seconds,
            # kombu looks for unacknowledged tasks of dead workers every 100 s by default.
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
    tasks.finalize()
    tasks.set_current()
    tasks.set_default()
    return tasks


@contextlib.contextmanager
def worker_in_thread(settings: Settings, concurrency: int = 2) -> Iterator[WorkController]:
    """A worker (thread pool) inside this process until the block exits."""
    configure_tasks(settings)
    worker = tasks.WorkController(
        pool="threads",
        concurrency=concurrency,
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(in_sighandler=False)
        thread.join(timeout=30)
