"""The Celery app every server's background tasks belong to (broker and results: Redis).

Tasks are acknowledged only when they finish (``acks_late``) and given back when their worker
dies, so a task runs at least once: every task must be safe to run twice. A task taken by a
worker that was killed outright returns to the queue after ``task_visibility_timeout_seconds``.

A worker runs either as its own process (``supportmesh worker``), or inside a server's process
(``worker_in_thread``): always for the servers of ``supportmesh up``, and whenever the backend
a task writes can be opened by one process only (Qdrant in local mode). The servers of one
process share one worker. Periodic tasks (approval expiry, session consolidation, ...) are
sent by Celery beat, inside each server's process (``beat_in_thread``) or, with
``beat_in_process`` off, by one ``supportmesh beat`` for the whole mesh (``run_beat``); each
tasks module says its entries (``schedule(settings)``). A task sent twice by two beats is
harmless, since every task is safe to run twice.

Each environment has its own queues (``task_queue``), so one Redis can carry the tasks of several
environments — tests beside development, or servers each with a Qdrant local store of their own —
and a worker never takes a task meant for another environment's databases. Within an
environment each server's tasks (named ``<server>.<task>``) have a queue of their own, which
only that server's worker (and ``supportmesh worker``) takes from: a server holding Qdrant's
local store never has its tasks run by another process that cannot open it.
"""

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.beat import EmbeddedService, Scheduler

from servers.runtime.keys import joined_key
from servers.runtime.settings import Settings, place
from servers.runtime.vectors import vectors_location

tasks = Celery("supportmesh", set_as_current=False)
_configured: list[Settings] = []


def task_queue(settings: Settings, server: str) -> str:
    """The queue of one server's tasks in this environment, ``supportmesh.1a2b3c4d.knowledge``.

    Named after where tasks write — the PostgreSQL database and Qdrant — so the servers and
    workers of one environment share it and nobody else's worker takes from it.
    """
    assert settings.postgres_url, "start_backends fills in postgres_url"
    vectors = place(settings.qdrant_url) if settings.qdrant_url else vectors_location(settings)
    where = joined_key(place(settings.postgres_url), vectors)
    return f"supportmesh.{hashlib.sha256(where.encode()).hexdigest()[:8]}.{server}"


def server_queues(settings: Settings) -> list[str]:
    """The queues of every server whose tasks this process has imported."""
    servers = {name.split(".")[0] for name in tasks.tasks if not name.startswith("celery.")}
    return [task_queue(settings, server) for server in sorted(servers)]


def configure_tasks(settings: Settings) -> Celery:
    """Point the app at ``settings``' Redis; call once per process before sending or working."""
    assert settings.redis_url, "start_backends fills in redis_url"
    _configured[:] = [settings]
    tasks.conf.update(
        broker_url=settings.redis_url,
        task_default_queue=task_queue(settings, "default"),
        # knowledge.index_article goes to the knowledge server's queue, and so on.
        task_routes=(lambda name, *_, **__: {"queue": task_queue(settings, name.split(".")[0])},),
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


def configured_settings() -> Settings | None:
    """The settings this process's app was last configured with, or None."""
    return _configured[0] if _configured else None


def task_settings() -> Settings:
    """The settings this process's tasks use (those given to ``configure_tasks``)."""
    assert _configured, "configure_tasks(settings) was not called in this process"
    return _configured[0]


@dataclass
class _Running:
    thread: threading.Thread
    stop: Callable[[], None]
    join: bool
    users: int = 1


_running: dict[str, _Running] = {}
_starting = threading.Lock()


@contextlib.contextmanager
def _shared(
    name: str,
    start: Callable[[], tuple[threading.Thread, Callable[[], None]]],
    join: bool = True,
) -> Iterator[None]:
    """One thread per ``name`` in this process, started by the first block that asks for it
    and stopped when the last one exits (and waited for, if ``join``)."""
    with _starting:
        if name in _running:
            _running[name].users += 1
        else:
            thread, stop = start()
            thread.start()
            _running[name] = _Running(thread, stop, join)
    try:
        yield
    finally:
        with _starting:
            running = _running[name]
            running.users -= 1
            if running.users == 0:
                del _running[name]
                running.stop()
                if running.join:
                    running.thread.join(timeout=30)


_local_servers: set[str] = set()
_worker_queues: dict[str, list[str]] = {}


def work_here(*servers: str) -> None:
    """Name the servers whose tasks this process's worker will run, before any of them starts.

    A process has one worker: Celery workers in one process share their broker connections,
    and stopping one breaks the others. ``supportmesh up`` names all of its servers; a process
    running one server need not call this.
    """
    _local_servers.update(servers)


@contextlib.contextmanager
def worker_in_thread(
    settings: Settings, server: str, concurrency: int = 3, required: bool = False
) -> Iterator[None]:
    """This process's worker (a thread pool), running ``server``'s tasks and those of the
    servers named by ``work_here``, until the last block that asked for it exits. Nothing
    when ``worker_in_process`` is off (a worker elsewhere runs them), unless ``required``."""
    configure_tasks(settings)
    if not (settings.worker_in_process or required):
        yield
        return
    _local_servers.add(server)
    name = f"worker {task_queue(settings, 'worker')}"
    queues = [task_queue(settings, s) for s in sorted(_local_servers)]

    def start() -> tuple[threading.Thread, Callable[[], None]]:
        _worker_queues[name] = queues
        worker = tasks.WorkController(
            pool="threads",
            concurrency=concurrency,
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            queues=queues,
        )
        thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
        return thread, lambda: worker.stop(in_sighandler=False)

    with _shared(name, start):
        if task_queue(settings, server) not in _worker_queues[name]:
            raise RuntimeError(
                f"this process's worker started before the {server} server: name every server "
                "with work_here() first"
            )
        yield


Schedule = dict[str, dict[str, Any]]  # Celery beat entries: name -> {task, schedule}


def _in_memory(schedule: Schedule) -> type[Scheduler]:
    class InMemorySchedule(Scheduler):  # type: ignore[misc]
        """Only these entries, kept in memory: after a restart the sweeps start over, which
        suits tasks that look at the database each time."""

        def setup_schedule(self) -> None:
            self.merge_inplace(schedule)

    return InMemorySchedule


@contextlib.contextmanager
def beat_in_thread(settings: Settings, server: str, schedule: Schedule) -> Iterator[None]:
    """Celery beat sending ``server``'s periodic ``schedule`` from inside this process until the
    block exits (one per server and process). Nothing when ``beat_in_process`` is off
    (``supportmesh beat`` sends them)."""
    configure_tasks(settings)
    if not settings.beat_in_process:
        yield
        return

    def start() -> tuple[threading.Thread, Callable[[], None]]:
        beat = EmbeddedService(tasks, thread=True, scheduler_cls=_in_memory(schedule))
        return beat, lambda: beat.service.stop(wait=False)

    # Not waited for: told to stop, the thread ends after its current sleep (up to a second;
    # with a server per beat, stopping `up` waited five of them), sending nothing more.
    with _shared(f"beat {task_queue(settings, server)}", start, join=False):
        yield


def run_beat(settings: Settings, schedule: Schedule) -> None:
    """Celery beat in the foreground, sending every entry of ``schedule`` until SIGINT or
    SIGTERM (``supportmesh beat``: one for the whole mesh, the servers' own beats off)."""
    app = configure_tasks(settings)
    app.Beat(scheduler=_in_memory(schedule), loglevel="INFO", quiet=True).run()
