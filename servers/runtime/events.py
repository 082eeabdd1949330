"""Events to Kafka: topics, and the relay that drains a server's transactional outbox.

The relay publishes committed outbox rows in order (key = the event's subject, acks=all) and
marks them sent in the same transaction that locked them. While Kafka is down it retries with
exponential backoff and jitter; rows stay unsent until a publish succeeds, so nothing is lost.
A crash between publish and mark can publish a row twice: consumers dedupe by event id.
Several replicas can relay one schema: ``FOR UPDATE SKIP LOCKED`` hands each row to one.
"""

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from schemas.events import Topic
from servers.runtime import telemetry
from servers.runtime.database import Pool

log = logging.getLogger(__name__)

BATCH = 200
CLAIM_UNSENT = """
    SELECT seq, topic, key, event::text AS event FROM outbox
    WHERE sent_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED
"""
MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE seq = ANY(%s)"
COUNT_UNSENT = "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"


async def ensure_topics(bootstrap: str, partitions: int = 3) -> None:
    """Create the five topics of DESIGN §5 where they do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t.value, partitions, 1) for t in Topic if t.value not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def new_producer(bootstrap: str, enable_idempotence: bool) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=enable_idempotence,
        request_timeout_ms=10_000,
        linger_ms=5,
    )


class OutboxRelay:
    """Publishes one schema's outbox to Kafka until cancelled."""

    def __init__(
        self,
        pool: Pool,
        postgres_url: str,
        schema: str,
        bootstrap: str,
        *,
        enable_idempotence: bool = False,
        poll_seconds: float = 1.0,
    ) -> None:
        self.pool, self.postgres_url, self.schema = pool, postgres_url, schema
        self.bootstrap, self.enable_idempotence = bootstrap, enable_idempotence
        self.poll_seconds = poll_seconds
        self.producer: AIOKafkaProducer | None = None
        self.topics_ready = False

    async def run(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, OSError, psycopg.OperationalError)),
            wait=wait_exponential_jitter(initial=0.1, max=5.0),
            before_sleep=lambda state: log.warning(
                "outbox relay for %s: %r; retrying",
                self.schema,
                state.outcome.exception() if state.outcome else None,
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._relay_forever()
        finally:
            await self._drop_producer()

    async def _relay_forever(self) -> None:
        if not self.topics_ready:
            await ensure_topics(self.bootstrap)
            self.topics_ready = True
        async with await psycopg.AsyncConnection.connect(
            self.postgres_url, autocommit=True
        ) as listener:
            await listener.execute(f"LISTEN outbox_{self.schema}")
            while True:
                try:
                    sent = await self.publish_pending()
                except (KafkaError, OSError):
                    await self._drop_producer()  # a fresh producer reconnects cleanly
                    raise
                if sent < BATCH:
                    async for _ in listener.notifies(timeout=self.poll_seconds, stop_after=1):
                        pass

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows; return how many were sent."""
        producer = await self._producer()
        async with self.pool.connection() as conn, conn.transaction():
            rows: list[dict[str, Any]] = await (
                await conn.execute(CLAIM_UNSENT, [BATCH])
            ).fetchall()
            if rows:
                sends = [
                    await producer.send(r["topic"], r["event"].encode(), key=r["key"].encode())
                    for r in rows
                ]
                await asyncio.gather(*sends)
                await conn.execute(MARK_SENT, [[r["seq"] for r in rows]])
                for row in rows:
                    telemetry.EVENTS_PUBLISHED.labels(self.schema, row["topic"]).inc()
            unsent = await (await conn.execute(COUNT_UNSENT)).fetchone()
        telemetry.OUTBOX_UNSENT.labels(self.schema).set(unsent["n"] if unsent else 0)
        return len(rows)

    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = new_producer(self.bootstrap, self.enable_idempotence)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self.producer = producer
        return self.producer

    async def _drop_producer(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=5)
