"""The Celery task that delivers one notification: ``notifications.deliver(event_id, attempts)``.

It runs on the notifications queue (the ``notifications.`` prefix routes it there), reads the
event from the delivery log and sends it through the channel of the worker's settings (see
``delivery.py``).

Idempotent, and safe to run twice or twice at once:

- It holds the delivery's row (``SELECT ... FOR UPDATE``) from before the send until the
  outcome is committed, so a second copy waits, then finds it sent.
- A delivery that is ``sent`` or ``dead`` is never sent again.
- ``attempts`` is a fence: a task runs only while the row has the attempt count the task was
  sent with. A copy of a task that already ran (Redis hands an unacknowledged task out again
  after the visibility timeout, a countdown longer than it included; Kafka delivers an event
  twice) finds the count moved on and does nothing, so copies neither send again nor use up
  attempts.

On failure it counts the attempt and keeps the error; below ``notify_max_attempts`` it retries
after an exponential backoff with jitter (``notify_retry_seconds``, doubling, at most an hour),
at the maximum the delivery is dead (``supportmesh notifications dead`` lists it, ``retry``
sends it again). An event whose data is not a notification goes dead at once, unsent.
PostgreSQL being unreachable is not an attempt: the task retries with the same backoff.

The one window left: a worker killed (or cut off from PostgreSQL) after the receiver accepted
the notification but before ``sent`` was committed leaves the row pending, and the redelivered
task sends it again. Mail receivers can drop the repeat by its Message-ID
(``<event-id@supportmesh>``), webhook receivers by ``SupportMesh-Event-Id``; the ``.eml`` file
is simply replaced.
"""

import asyncio
import logging
import random
import uuid
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row
from pydantic import ValidationError

from schemas.events import Event
from schemas.notifications import Notification
from servers.notifications import store
from servers.notifications.delivery import DeliveryFailed, channel_for, send
from servers.runtime.settings import Settings
from servers.runtime.tasks import task_settings, tasks

log = logging.getLogger(__name__)
SCHEMA = "notifications"
DELIVER_TASK = "notifications.deliver"
MAX_BACKOFF_SECONDS = 3600.0


class Outcome(NamedTuple):
    """What one run did: ``result`` (sent, retry, dead, or why it did nothing), the attempts
    made so far, and the delay before the next when it is to be retried."""

    result: str
    attempts: int
    retry_in: float | None = None


def backoff(base_seconds: float, failures: int) -> float:
    """The delay after ``failures`` failed attempts: ``base_seconds`` doubling from the first,
    at most an hour, of which a random half (so that retries of many do not come together)."""
    ceiling = min(MAX_BACKOFF_SECONDS, base_seconds * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (not for secrets)


async def deliver_now(settings: Settings, event_id: uuid.UUID, attempts: int) -> Outcome:
    """Send the logged notification ``event_id`` once, if it is pending with ``attempts``
    attempts made, and record what happened."""
    assert settings.postgres_url, "start_backends fills in postgres_url"
    async with (
        await psycopg.AsyncConnection.connect(
            settings.postgres_url,
            options=f"-c search_path={SCHEMA}",
            row_factory=dict_row,
            autocommit=True,
        ) as conn,
        conn.transaction(),
    ):
        row = await store.claim(conn, event_id)
        if row is None:
            return Outcome("not logged", attempts)
        if row["status"] != "pending":
            return Outcome(f"already {row['status']}", row["attempts"])
        if row["attempts"] != attempts:
            return Outcome("superseded", row["attempts"])
        event = Event.model_validate(row["event"])
        try:
            notification = Notification.model_validate(event.data)
        except ValidationError as exc:
            await store.mark_dead(conn, event_id, None, f"not a notification: {exc}", False)
            return Outcome("dead", attempts)
        channel = channel_for(settings)
        try:
            note = await asyncio.to_thread(send, settings, event, notification)
        except DeliveryFailed as exc:
            made = attempts + 1
            if made >= settings.notify_max_attempts:
                await store.mark_dead(conn, event_id, channel, str(exc))
                log.warning("notification %s dead after %d attempts: %s", event_id, made, exc)
                return Outcome("dead", made)
            delay = backoff(settings.notify_retry_seconds, made)
            await store.mark_failed(conn, event_id, channel, str(exc), delay)
            log.info("notification %s: %s; retrying in %.1f s", event_id, exc, delay)
            return Outcome("retry", made, delay)
        await store.mark_sent(conn, event_id, channel, note)
        return Outcome("sent", attempts + 1)


@tasks.task(bind=True, name=DELIVER_TASK, max_retries=None, ignore_result=True)  # type: ignore[untyped-decorator]
def deliver(self: Any, event_id: str, attempts: int = 0) -> str:
    settings = task_settings()
    try:
        outcome = asyncio.run(deliver_now(settings, uuid.UUID(event_id), attempts))
    except psycopg.OperationalError as exc:
        delay = backoff(settings.notify_retry_seconds, self.request.retries + 1)
        log.warning("notification %s: %s; retrying in %.1f s", event_id, exc, delay)
        raise self.retry(exc=exc, countdown=delay) from exc
    if outcome.retry_in is not None:
        raise self.retry(args=[event_id, outcome.attempts], countdown=outcome.retry_in)
    return outcome.result


def send_delivery(event_id: uuid.UUID, attempts: int) -> None:
    """Queue a ``notifications.deliver`` task for a pending delivery with ``attempts`` made
    (the app must be configured: ``configure_tasks``). Blocks while it talks to Redis."""
    deliver.apply_async(args=[str(event_id), attempts])
