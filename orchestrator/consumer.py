"""Kafka in: each new ticket (``customer.requests``) starts a run; each decided or expired
approval (``human.approvals``) wakes the run paused on it.

One consumer group (``orchestrator_group``, default ``orchestrator``), so that replicas share
the partitions. Delivery is at least once: each event is applied in one transaction together
with its id in ``consumed_events``, and offsets are committed after. A redelivered event (a
rebalance, a crash before the commit) finds its id there and changes nothing; one whose
transaction did not commit is delivered again. Applying only writes to ``runs``: the runners
do the work.
"""

import asyncio
import re
from typing import Any

import psycopg
from prometheus_client import Counter

from orchestrator.runner import enqueue, wake_on_decision
from schemas.events import Event, Topic
from servers.runtime.database import Pool
from servers.runtime.events import EventBatch, consume_events
from servers.runtime.settings import Settings

TOPICS = (Topic.CUSTOMER_REQUESTS, Topic.HUMAN_APPROVALS)
DECIDED = ("approval.decided", "approval.expired")
APPROVAL_SUBJECT = re.compile(r"^ticket:(\d+)$")  # what the graph names its approvals for
REMEMBER = """
    INSERT INTO consumed_events (event_id, topic) VALUES (%s, %s) ON CONFLICT DO NOTHING
"""
CONSUMED = Counter(
    "supportmesh_orchestrator_events_total",
    "Kafka events the orchestrator read, by what they did",
    ["topic", "result"],
)


def ticket_of(event: Event) -> int | None:
    """The ticket an event asks the orchestrator to act on, or None for one it ignores (a
    number no ticket can have, too: one that fails to insert would stop the consumer)."""
    ticket_id: object = None
    if event.type == "ticket.created":
        ticket_id = event.data.get("ticket_id")
    elif event.type in DECIDED:
        found = APPROVAL_SUBJECT.match(str(event.data.get("subject", "")))
        ticket_id = int(found.group(1)) if found else None
    if isinstance(ticket_id, int) and not isinstance(ticket_id, bool) and 0 < ticket_id < 2**63:
        return ticket_id
    return None


async def apply(
    conn: psycopg.AsyncConnection[Any], topic: str, event: Event, start_runs: bool = True
) -> str:
    """Apply one event, once: ``started``, ``woken``, ``duplicate`` or ``ignored``
    (``start_runs`` false: new tickets are ignored)."""
    ticket_id = ticket_of(event)
    if ticket_id is None or (event.type == "ticket.created" and not start_runs):
        return "ignored"
    async with conn.transaction():
        if (await conn.execute(REMEMBER, [event.id, topic])).rowcount == 0:
            return "duplicate"
        if event.type == "ticket.created":
            return "started" if await enqueue(conn, ticket_id, None) else "known"
        return "woken" if await wake_on_decision(conn, ticket_id) else "ignored"


async def consume(settings: Settings, pool: Pool, ready: asyncio.Event) -> None:
    """Read both topics until cancelled (see ``consume_events``); ``ready`` is set while the
    consumer holds its partitions."""

    async def apply_batch(batch: EventBatch) -> None:
        async with pool.connection() as conn:
            for topic, event in batch:
                result = await apply(conn, topic, event, settings.orchestrator_consume_tickets)
                CONSUMED.labels(topic, result).inc()

    await consume_events(
        settings,
        group=settings.orchestrator_group,
        topics=TOPICS,
        apply=apply_batch,
        ready=ready,
        offset_reset=settings.orchestrator_offset_reset,
    )
