"""The delivery log in PostgreSQL (schema ``notifications``): one row per notification event.

A row is keyed by the event's id, so recording an event that Kafka delivered twice changes
nothing. Its status moves ``pending`` -> ``sent`` or ``pending`` -> ``dead``; only
``requeue_dead`` moves it back to ``pending``. ``attempts`` counts sends tried (the successful
one too) and doubles as a fence: a delivery task carries the attempt count it was sent for,
and runs only while the row still has it (see ``tasks.py``).

The functions taking a connection run inside the caller's transaction, on a row the caller
holds with ``claim``.
"""

import uuid
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from schemas.events import Event
from schemas.notifications import Notification
from servers.runtime.database import Pool, Row

INSERT = """
    WITH new AS (
        INSERT INTO deliveries (event_id, kind, subject, recipients, event, status, last_error)
        VALUES (%(id)s, %(kind)s, %(subject)s, %(to)s, %(event)s, %(status)s, %(error)s)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING status, attempts
    )
    SELECT status, attempts FROM new
    UNION ALL
    SELECT status, attempts FROM deliveries WHERE event_id = %(id)s
"""
CLAIM = "SELECT event_id, status, attempts, event FROM deliveries WHERE event_id = %s FOR UPDATE"
MARK_SENT = """
    UPDATE deliveries SET status = 'sent', channel = %s, attempts = attempts + 1,
        last_error = %s, last_attempt_at = now(), next_attempt_at = NULL, sent_at = now()
    WHERE event_id = %s
"""
MARK_FAILED = """
    UPDATE deliveries SET channel = %s, attempts = attempts + 1, last_error = %s,
        last_attempt_at = now(), next_attempt_at = now() + make_interval(secs => %s)
    WHERE event_id = %s
    RETURNING attempts
"""
MARK_DEAD = """
    UPDATE deliveries SET status = 'dead', channel = coalesce(%s, channel),
        attempts = attempts + %s, last_error = %s, last_attempt_at = now(), next_attempt_at = NULL
    WHERE event_id = %s
"""
LIST_DEAD = """
    SELECT event_id, kind, subject, recipients, attempts, last_error, last_attempt_at
    FROM deliveries WHERE status = 'dead' ORDER BY created_at, event_id
"""
REQUEUE_DEAD = """
    UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = NULL
    WHERE status = 'dead' AND (%(all)s OR event_id = ANY(%(ids)s))
    RETURNING event_id
"""

ERROR_CHARS = 1000  # of a failure's message, kept in last_error


async def record(pool: Pool, event: Event, notification: Notification) -> int | None:
    """Log ``event`` as a pending delivery unless its id is logged already.

    Returns the attempt count a delivery task must be sent with while the delivery is still
    pending (new, or logged before and not finished), or None once it is sent or dead.
    """
    values = _values(event, notification.kind.value, notification.to, "pending", None)
    async with pool.connection() as conn:
        row = await (await conn.execute(INSERT, values)).fetchone()
    assert row is not None
    return int(row["attempts"]) if row["status"] == "pending" else None


async def record_dead(pool: Pool, event: Event, reason: str) -> None:
    """Log ``event``, whose data is not a notification, as dead with ``reason`` (unless its id
    is logged already)."""
    kind, to = event.data.get("kind"), event.data.get("to")
    recipients = [str(a) for a in to] if isinstance(to, list) else []
    values = _values(event, kind if isinstance(kind, str) else None, recipients, "dead", reason)
    async with pool.connection() as conn:
        await conn.execute(INSERT, values)


def _values(
    event: Event, kind: str | None, to: list[str], status: str, error: str | None
) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": kind,
        "subject": event.subject,
        "to": to,
        "event": Jsonb(event.model_dump(mode="json")),
        "status": status,
        "error": error[:ERROR_CHARS] if error else None,
    }


async def claim(conn: AsyncConnection[Row], event_id: uuid.UUID) -> Row | None:
    """The delivery's row (event_id, status, attempts, event), locked until the caller's
    transaction ends; None if no such event was logged."""
    return await (await conn.execute(CLAIM, [event_id])).fetchone()


async def mark_sent(
    conn: AsyncConnection[Row], event_id: uuid.UUID, channel: str, note: str | None = None
) -> None:
    """Record the attempt that delivered it, through ``channel`` (``note``: e.g. recipients
    the mail server refused while accepting the others)."""
    await conn.execute(MARK_SENT, [channel, note[:ERROR_CHARS] if note else None, event_id])


async def mark_failed(
    conn: AsyncConnection[Row], event_id: uuid.UUID, channel: str, error: str, retry_in: float
) -> int:
    """Record a failed attempt and when the next is due; returns the attempts made so far."""
    row = await (
        await conn.execute(MARK_FAILED, [channel, error[:ERROR_CHARS], retry_in, event_id])
    ).fetchone()
    assert row is not None
    return int(row["attempts"])


async def mark_dead(
    conn: AsyncConnection[Row],
    event_id: uuid.UUID,
    channel: str | None,
    error: str,
    attempted: bool = True,
) -> None:
    """Dead-letter it with ``error``; ``attempted``: a send was tried (and counts)."""
    await conn.execute(MARK_DEAD, [channel, int(attempted), error[:ERROR_CHARS], event_id])


async def list_dead(pool: Pool) -> list[Row]:
    """Dead-lettered deliveries, oldest first: event_id, kind, subject, recipients, attempts,
    last_error, last_attempt_at."""
    async with pool.connection() as conn:
        return await (await conn.execute(LIST_DEAD)).fetchall()


async def requeue_dead(pool: Pool, event_ids: list[uuid.UUID] | None) -> list[uuid.UUID]:
    """Make dead deliveries pending again with no attempts counted: those of ``event_ids``, or
    every one with None. Returns the ids requeued (ids that are not dead are left alone); each
    needs a delivery task sent with attempt count 0."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(REQUEUE_DEAD, {"all": event_ids is None, "ids": event_ids or []})
        ).fetchall()
    return [row["event_id"] for row in rows]
