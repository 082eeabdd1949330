"""The one way a tool writes: a transaction that also keys, audits and emits.

``perform_write`` runs the tool's change in one transaction together with

- the idempotency key: a repeat of (tool, key) with the same arguments returns the first result
  and changes nothing; with other arguments it is a ``conflict``;
- an audit row (actor, tool, arguments hash, subject, result);
- its events, written to the outbox and published by the relay after commit. Each event's
  data names the tool and the actor (analytics counts writes by both).

If anything fails, none of it happened.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from schemas.events import Event, Topic
from servers.runtime.auth import Caller
from servers.runtime.database import Pool, Row
from servers.runtime.errors import Conflict, Unavailable
from servers.runtime.events import add_to_outbox
from servers.runtime.keys import joined_key
from servers.runtime.pii import mask_data

R = TypeVar("R", bound=BaseModel)

LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
FIND_KEY = "SELECT arguments_hash, result FROM idempotency_keys WHERE tool = %s AND key = %s"
SAVE_KEY = """
    INSERT INTO idempotency_keys (tool, key, arguments_hash, result) VALUES (%s, %s, %s, %s)
"""
INSERT_AUDIT = """
    INSERT INTO audit (actor, tool, arguments_hash, subject, result) VALUES (%s, %s, %s, %s, %s)
"""


MAX_TITLE = 200  # a message's subject line
MAX_BODY = 20_000  # and its text: a message, not a document


@dataclass
class Write:
    """The open transaction of one write, handed to the tool's change."""

    conn: AsyncConnection[Row]
    source: str
    tool: str
    actor: str
    trace_id: str | None
    subject: str | None = None
    events: list[tuple[Topic, Event]] = field(default_factory=list)

    def emit(self, topic: Topic, type: str, subject: str, data: dict[str, Any]) -> None:
        """Queue an event; it is committed with the change and published after.

        Emails, phone and card numbers in ``data`` are masked: events are not a PII store.
        """
        data = {"tool": self.tool, "actor": self.actor, **data}
        self._queue(topic, type, subject, mask_data(data))

    def notify(
        self, kind: str, subject: str, to: list[str], title: str, body: str, **about: Any
    ) -> None:
        """Queue a message to people (``notifications.outbound``), delivered after commit.

        Unlike other events it is not masked: it is the message itself, addresses included.
        Nothing is queued when there is nobody to tell.
        """
        if to:
            data = {
                "kind": kind,
                "to": to,
                "title": " ".join(title.split())[:MAX_TITLE],  # one line: a mail subject
                "body": body[:MAX_BODY],
                **about,
            }
            self._queue(Topic.NOTIFICATIONS_OUTBOUND, "notification.requested", subject, data)

    def _queue(self, topic: Topic, type: str, subject: str, data: dict[str, Any]) -> None:
        event = Event(
            type=type, source=self.source, subject=subject, data=data, trace_id=self.trace_id
        )
        self.events.append((topic, event))
        self.subject = self.subject or subject


async def lock_row(
    write: Write, sql: str, params: list[Any], field: str, record: str
) -> Row | None:
    """The one row ``sql`` selects ``FOR UPDATE`` (``NOWAIT`` or under a ``lock_timeout``), or
    None. If another write holds it: ``conflict`` naming the record, e.g. ``conflict: order_id:
    order #W2378156 is being changed by another call; retry``."""
    try:
        return await (await write.conn.execute(sql, params)).fetchone()
    except psycopg.errors.LockNotAvailable as exc:
        raise Conflict(field, f"{record} is being changed by another call; retry") from exc


def arguments_hash(arguments: dict[str, Any]) -> str:
    canonical = json.dumps(arguments, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def perform_write(
    pool: Pool,
    *,
    source: str,
    tool: str,
    caller: Caller,
    arguments: dict[str, Any],
    idempotency_key: str | None,
    result_type: type[R],
    change: Callable[[Write], Awaitable[R]],
) -> R:
    """Run ``change`` once per idempotency key, atomically with its audit row and events."""
    digest = arguments_hash(arguments)
    write: Write | None = None
    try:
        async with pool.connection() as conn, conn.transaction():
            if idempotency_key is not None:
                await conn.execute(LOCK_KEY, [joined_key(tool, idempotency_key)])
                cur = await conn.execute(FIND_KEY, [tool, idempotency_key])
                if (first := await cur.fetchone()) is not None:
                    if first["arguments_hash"] != digest:
                        raise Conflict(
                            "idempotency_key", "already used for a call with other arguments"
                        )
                    return result_type.model_validate(first["result"])
            write = Write(
                conn=conn, source=source, tool=tool, actor=caller.actor, trace_id=caller.trace_id
            )
            result = await change(write)
            stored = Jsonb(result.model_dump(mode="json"))
            await add_to_outbox(conn, write.events)
            await conn.execute(INSERT_AUDIT, [caller.actor, tool, digest, write.subject, stored])
            if idempotency_key is not None:
                await conn.execute(SAVE_KEY, [tool, idempotency_key, digest, stored])
            return result
    except (
        psycopg.errors.LockNotAvailable,
        psycopg.errors.SerializationFailure,
        psycopg.errors.DeadlockDetected,
    ) as exc:
        subject = f"{tool} on {write.subject}" if write and write.subject else tool
        raise Conflict(None, f"{subject} collided with another change; retry") from exc
    except psycopg.OperationalError as exc:
        raise Unavailable(None, f"database unavailable: {exc}") from exc
