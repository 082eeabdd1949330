"""Kafka to Celery: notification events from ``notifications.outbound`` become delivery tasks.

``notifications_running(settings)`` migrates and opens the ``notifications`` schema and reads
the topic as consumer group ``notifications_group`` until the block exits. Each
``notification.requested`` event is logged as a pending delivery, keyed by its id, and a
``notifications.deliver`` task is sent for it while it is still pending; offsets are committed
after that. Delivery from Kafka is at least once: an event read twice finds its row, and is
either finished (nothing is sent) or still pending (a second task is sent, which the task's
fence makes harmless). An event whose data is not a notification is logged dead with the
reason and never retried on its own; events of other types are skipped.

The Celery worker that runs the tasks is not started here: the host process starts it
(``worker_in_thread(settings, "notifications")``), or ``supportmesh worker --only
notifications`` runs it apart.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kombu.exceptions import OperationalError as BrokerUnreachable
from pydantic import ValidationError

from schemas.events import Topic
from schemas.notifications import NOTIFICATION_REQUESTED, Notification
from servers.notifications import store
from servers.notifications.tasks import SCHEMA, send_delivery
from servers.runtime.database import Pool, migrate_and_open
from servers.runtime.events import EventBatch, consume_events
from servers.runtime.settings import Settings
from servers.runtime.tasks import configure_tasks

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Handover:
    """The running consumer: the schema's pool, and ``ready``, set while the consumer holds
    its partitions (events published from then on are handed over)."""

    pool: Pool
    ready: asyncio.Event


@contextlib.asynccontextmanager
async def notifications_running(
    settings: Settings, offset_reset: Literal["earliest", "latest"] = "earliest"
) -> AsyncIterator[Handover]:
    """Hand notification events over to delivery until the block exits.

    ``offset_reset``: where the consumer group starts the first time it runs (later, at its
    committed offsets); earliest delivers every notification still on the topic.
    """
    assert settings.postgres_url, "start_backends fills in postgres_url"
    configure_tasks(settings)
    pool = await migrate_and_open(settings.postgres_url, SCHEMA, MIGRATIONS)
    ready = asyncio.Event()
    consuming = asyncio.create_task(
        consume_events(
            settings,
            group=settings.notifications_group,
            topics=[Topic.NOTIFICATIONS_OUTBOUND],
            apply=functools.partial(hand_over, pool),
            ready=ready,
            offset_reset=offset_reset,
        ),
        name="notifications-consumer",
    )
    consuming.add_done_callback(_report_stop)
    try:
        yield Handover(pool, ready)
    finally:
        consuming.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
        finally:
            await pool.close()


def _report_stop(consuming: "asyncio.Task[None]") -> None:
    if not consuming.cancelled() and consuming.exception() is not None:
        log.error("notifications stopped being handed over", exc_info=consuming.exception())


async def hand_over(pool: Pool, batch: EventBatch) -> None:
    """Log each notification of ``batch`` and send a delivery task for each still pending.

    Raises ``ConnectionError`` while Redis cannot take tasks, so that the consumer backs off
    and reads the batch again rather than committing past it.
    """
    for topic, event in batch:
        if event.type != NOTIFICATION_REQUESTED:
            log.debug("skipped %s event %s on %s", event.type, event.id, topic)
            continue
        try:
            notification = Notification.model_validate(event.data)
        except ValidationError as exc:
            log.warning("notification %s from %s is malformed: %s", event.id, event.source, exc)
            await store.record_dead(pool, event, f"not a notification: {exc}")
            continue
        attempts = await store.record(pool, event, notification)
        if attempts is None:
            continue
        try:
            await asyncio.to_thread(send_delivery, event.id, attempts)
        except BrokerUnreachable as exc:
            raise ConnectionError(f"the task broker is unreachable: {exc}") from exc
