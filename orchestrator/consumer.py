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
import logging
import re
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from orchestrator.runner import enqueue, wake_on_decision
from schemas.events import Event, Topic
from servers.runtime.database import Pool
from servers.runtime.events import ensure_topics
from servers.runtime.settings import Settings

log = logging.getLogger(__name__)

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
    """The ticket an event asks the orchestrator to act on, or None for one it ignores."""
    if event.type == "ticket.created":
        ticket_id = event.data.get("ticket_id")
        return ticket_id if isinstance(ticket_id, int) else None
    if event.type in DECIDED:
        found = APPROVAL_SUBJECT.match(str(event.data.get("subject", "")))
        return int(found.group(1)) if found else None
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
    """Read both topics until cancelled; reconnects with backoff while Kafka or PostgreSQL is
    down (offsets not committed are read again). ``ready`` is set while the consumer has its
    partitions and a committed position on each."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((KafkaError, OSError, psycopg.OperationalError)),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        before_sleep=lambda state: log.warning(
            "orchestrator consumer: %r; retrying",
            state.outcome.exception() if state.outcome else None,
        ),
    )
    async for attempt in retrying:
        with attempt:
            try:
                await _consume(settings, pool, ready)
            finally:
                ready.clear()


async def _consume(settings: Settings, pool: Pool, ready: asyncio.Event) -> None:
    assert settings.kafka_bootstrap, "start_backends() fills it"
    await ensure_topics(settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        *[topic.value for topic in TOPICS],
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.orchestrator_group,
        enable_auto_commit=False,
        auto_offset_reset=settings.orchestrator_offset_reset,
        # A new ticket waits for this at most when the partitions are idle (default 500 ms).
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=200)
            async with pool.connection() as conn:
                for partition, records in batches.items():
                    for record in records:
                        try:
                            event = Event.model_validate_json(record.value or b"")
                        except ValidationError as exc:
                            log.warning("skipped a malformed event on %s: %s", partition, exc)
                            CONSUMED.labels(partition.topic, "malformed").inc()
                            continue
                        result = await apply(
                            conn, partition.topic, event, settings.orchestrator_consume_tickets
                        )
                        CONSUMED.labels(partition.topic, result).inc()
            if batches or not ready.is_set():
                # The first time, too: a position found by offset reset is committed, so that
                # what is published while this service is down is read when it is back.
                await consumer.commit()
                ready.set()
    finally:
        await consumer.stop()
