"""Events to Kafka: topics, and the relay that drains a server's transactional outbox.

The relay publishes committed outbox rows in order (key = the event's subject, acks=all) and
marks them sent in the same transaction that locked them. While Kafka is down it retries with
exponential backoff and jitter; rows stay unsent until a publish succeeds, so nothing is lost.
A crash between publish and mark can publish a row twice: consumers dedupe by event id.
Several replicas may run a relay for one schema; one of them (holding the schema's advisory
lock) publishes at a time, so an aggregate's events keep their commit order on Kafka, and
another takes over when its process dies.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from psycopg.types.json import Jsonb
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from schemas.events import Event, Topic
from servers.runtime import telemetry
from servers.runtime.database import Pool, migrate_and_open
from servers.runtime.settings import Settings

log = logging.getLogger(__name__)

BATCH = 200
CLAIM_UNSENT = """
    SELECT seq, topic, key, event::text AS event FROM outbox
    WHERE sent_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED
"""
MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE seq = ANY(%s)"
COUNT_UNSENT = "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
LEAD = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
INSERT_OUTBOX = """
    INSERT INTO outbox (id, topic, key, event) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING
"""
NOTIFY_RELAY = "SELECT pg_notify('outbox_' || current_schema(), '')"


async def add_to_outbox(
    conn: psycopg.AsyncConnection[Any], events: list[tuple[Topic, Event]]
) -> None:
    """Queue ``events`` in the outbox of the connection's schema (in its transaction, if one is
    open) and wake the relay. An event whose id is already there is not added again."""
    if not events:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            INSERT_OUTBOX,
            [
                [event.id, topic.value, event.subject, Jsonb(event.model_dump(mode="json"))]
                for topic, event in events
            ],
        )
    await conn.execute(NOTIFY_RELAY)


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


def new_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        request_timeout_ms=10_000,
        linger_ms=5,
        # aiokafka lets a single record exceed max_batch_size, so 1 byte = one record a batch
        max_batch_size=1 if settings.kafka_record_per_batch else 16_384,
    )


class OutboxRelay:
    """Publishes one schema's outbox to Kafka until cancelled."""

    def __init__(self, pool: Pool, schema: str, settings: Settings) -> None:
        assert settings.postgres_url and settings.kafka_bootstrap, "start_backends() fills these"
        self.pool, self.schema, self.settings = pool, schema, settings
        self.postgres_url, self.bootstrap = settings.postgres_url, settings.kafka_bootstrap
        self.producer: AIOKafkaProducer | None = None

    async def run(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, OSError, psycopg.OperationalError)),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
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
        # On every (re)connect: a broker that lost its state (Tansu keeps none) gets the topics
        # back with their partitions before anything is published to it.
        await ensure_topics(self.bootstrap)
        async with await psycopg.AsyncConnection.connect(
            self.postgres_url, autocommit=True
        ) as listener:
            # One relay per schema publishes at a time, so that one aggregate's events reach
            # Kafka in the order they were committed (two relays taking batches side by side
            # could publish a later event first). The lock is held by this connection: if its
            # process dies, another replica's relay takes over.
            while not await self._lead(listener):
                log.debug("outbox relay for %s: another relay publishes; standing by", self.schema)
                await asyncio.sleep(self.settings.outbox_poll_seconds)
            await listener.execute(f"LISTEN outbox_{self.schema}")
            while True:
                try:
                    sent = await self.publish_pending()
                except (KafkaError, OSError):
                    await self._drop_producer()  # a fresh producer reconnects cleanly
                    raise
                if sent < BATCH:
                    async for _ in listener.notifies(
                        timeout=self.settings.outbox_poll_seconds, stop_after=1
                    ):
                        pass

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await (await conn.execute(LEAD, [f"supportmesh:outbox:{self.schema}"])).fetchone()
        return bool(row and row[0])

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
            producer = new_producer(self.settings)
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


@contextlib.asynccontextmanager
async def schema_with_outbox(
    settings: Settings, schema: str, migrations: Path
) -> AsyncIterator[Pool]:
    """A server's database for as long as it runs: migrated, pooled, its outbox relayed."""
    assert settings.postgres_url
    pool = await migrate_and_open(settings.postgres_url, schema, migrations)
    relaying = asyncio.create_task(
        OutboxRelay(pool, schema, settings).run(), name=f"{schema}-relay"
    )
    try:
        yield pool
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await pool.close()
