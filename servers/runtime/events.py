"""Events to Kafka: topics, and the relay that drains a server's transactional outbox.

The relay publishes committed outbox rows in order (key = the event's subject, acks=all) and
marks them sent in the same transaction that locked them. While Kafka is down it retries with
exponential backoff and jitter; rows stay unsent until a publish succeeds, so nothing is lost.
A crash between publish and mark can publish a row twice: consumers dedupe by event id.
Several replicas may run a relay for one schema; one of them (holding the schema's advisory
lock) publishes at a time, so an aggregate's events keep their commit order on Kafka, and
another takes over when its process dies.

``consume_events`` is the other end, the one loop every consumer (the orchestrator, analytics,
notifications) reads with.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from psycopg.types.json import Jsonb
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from schemas.events import Event, Topic
from servers.runtime import telemetry
from servers.runtime.database import Pool, migrate_and_open
from servers.runtime.settings import Settings

log = logging.getLogger(__name__)

BATCH = 200
CLAIM_UNSENT = """
    SELECT seq, topic, key, event::text AS event FROM outbox
    WHERE sent_at IS NULL AND failed_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED
"""
MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE seq = ANY(%s)"
MARK_FAILED = "UPDATE outbox SET failed_at = now(), error = %s WHERE seq = %s"
COUNT_UNSENT = "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL"
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
            sends, sent = [], []
            for row in rows:
                try:
                    sends.append(
                        await producer.send(
                            row["topic"], row["event"].encode(), key=row["key"].encode()
                        )
                    )
                    sent.append(row)
                except MessageSizeTooLargeError as exc:
                    # Never sendable: set aside (the outbox keeps it, a rebuild reads it), so
                    # that it does not hold up every event after it.
                    log.error("outbox %s: event %s set aside: %s", self.schema, row["seq"], exc)
                    await conn.execute(MARK_FAILED, [str(exc)[:1000], row["seq"]])
                    telemetry.EVENTS_SET_ASIDE.labels(self.schema, row["topic"]).inc()
            if sent:
                await asyncio.gather(*sends)
                await conn.execute(MARK_SENT, [[r["seq"] for r in sent]])
                for row in sent:
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


class MetricsSampler:
    """A server's minute sample on ``system.analytics``: its tool calls by tool and outcome
    since the last sample (from this process's counters) and its outbox backlog.

    Written through the outbox like every event, so samples taken while Kafka is down arrive
    later and a rebuilt analytics has them too.
    """

    def __init__(self, pool: Pool, server: str) -> None:
        self.pool, self.server = pool, server
        self.counted: dict[tuple[str, str], float] = {}

    def calls_since_last(self) -> tuple[list[dict[str, Any]], dict[tuple[str, str], float]]:
        """The calls since the last sample written, and the counts to remember once it is."""
        calls, counted = [], dict(self.counted)
        for metric in telemetry.TOOL_CALLS.collect():
            for sample in metric.samples:
                labels = sample.labels
                if not sample.name.endswith("_total") or labels.get("server") != self.server:
                    continue
                key = (labels["tool"], labels["outcome"])
                if count := int(sample.value - counted.get(key, 0.0)):
                    calls.append({"tool": key[0], "outcome": key[1], "calls": count})
                counted[key] = sample.value
        return calls, counted

    async def sample(self, interval: float) -> None:
        calls, counted = self.calls_since_last()
        async with self.pool.connection() as conn, conn.transaction():
            unsent = await (await conn.execute(COUNT_UNSENT)).fetchone()
            data = {
                "server": self.server,
                "interval_seconds": interval,
                "tools": calls,
                "outbox_unsent": unsent["n"] if unsent else 0,
            }
            event = Event(
                type="metrics.sampled",
                source=self.server,
                subject=f"server/{self.server}",
                data=data,
            )
            await add_to_outbox(conn, [(Topic.SYSTEM_ANALYTICS, event)])
        self.counted = counted

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sample(interval)
            except psycopg.Error as exc:  # the counts carry over to the next sample
                log.warning("metrics sample of %s not written: %r", self.server, exc)


@contextlib.asynccontextmanager
async def schema_with_outbox(
    settings: Settings, schema: str, migrations: Path
) -> AsyncIterator[Pool]:
    """A server's database for as long as it runs: migrated, pooled, its outbox relayed, and a
    metrics sample written every ``metrics_sample_seconds``."""
    assert settings.postgres_url
    pool = await migrate_and_open(settings.postgres_url, schema, migrations)
    background = [
        asyncio.create_task(OutboxRelay(pool, schema, settings).run(), name=f"{schema}-relay"),
        asyncio.create_task(
            MetricsSampler(pool, schema).run(settings.metrics_sample_seconds),
            name=f"{schema}-metrics",
        ),
    ]
    try:
        yield pool
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()


async def _record_lag(consumer: AIOKafkaConsumer, group: str) -> None:
    """Records behind the end of each topic, over this consumer's partitions (those whose end
    it has seen in a fetch)."""
    behind: dict[str, int] = {}
    for partition in consumer.assignment():
        if (end := consumer.highwater(partition)) is not None:
            position = await consumer.position(partition)
            behind[partition.topic] = behind.get(partition.topic, 0) + max(0, end - position)
    for topic, records in behind.items():
        telemetry.CONSUMER_LAG.labels(group, topic).set(records)


# (topic, event) pairs of one fetch, in each partition's order
EventBatch = list[tuple[str, Event]]


async def consume_events(
    settings: Settings,
    *,
    group: str,
    topics: Sequence[Topic],
    apply: Callable[[EventBatch], Awaitable[None]],
    ready: asyncio.Event | None = None,
    offset_reset: Literal["earliest", "latest"] = "earliest",
) -> None:
    """Read ``topics`` as consumer group ``group`` until cancelled, handing each fetched batch
    to ``apply`` and committing the offsets after it returns.

    Delivery is at least once: ``apply`` must skip an event whose id it has already applied (a
    rebalance or a crash before the commit delivers it again). While Kafka or PostgreSQL is
    down it reconnects with backoff; what was not committed is read again. ``ready`` is set
    while the consumer holds its partitions with a committed position on each. A record that
    is not an event is logged and skipped.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((KafkaError, OSError, psycopg.OperationalError)),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        before_sleep=lambda state: log.warning(
            "%s consumer: %r; retrying", group, state.outcome.exception() if state.outcome else None
        ),
    )
    ready = ready or asyncio.Event()
    async for attempt in retrying:
        with attempt:
            try:
                await _consume(settings, group, topics, apply, ready, offset_reset)
            finally:
                ready.clear()


async def _consume(
    settings: Settings,
    group: str,
    topics: Sequence[Topic],
    apply: Callable[[EventBatch], Awaitable[None]],
    ready: asyncio.Event,
    offset_reset: str,
) -> None:
    assert settings.kafka_bootstrap, "start_backends() fills it"
    await ensure_topics(settings.kafka_bootstrap)
    session_timeout = settings.kafka_session_timeout_ms or (
        6000 if settings.kafka_record_per_batch else 10_000  # the embedded broker: see settings
    )
    consumer = AIOKafkaConsumer(
        *[topic.value for topic in topics],
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset=offset_reset,
        # An event waits for this at most when the partitions are idle (default 500 ms).
        fetch_max_wait_ms=50,
        session_timeout_ms=session_timeout,
        heartbeat_interval_ms=session_timeout // 3,
    )
    await consumer.start()  # returns once the group is joined and partitions assigned
    try:
        if assigned := consumer.assignment():
            # Ready at once: each partition's position (committed, or found by offset reset)
            # is committed, so what is published while this consumer is down is read when it
            # is back.
            for partition in assigned:
                await consumer.position(partition)
            await consumer.commit()
            ready.set()
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=500)
            batch: EventBatch = []
            for partition, records in fetched.items():
                for record in records:
                    try:
                        batch.append(
                            (partition.topic, Event.model_validate_json(record.value or b""))
                        )
                    except ValidationError as exc:
                        log.warning(
                            "%s: skipped a malformed event on %s: %s", group, partition, exc
                        )
                        telemetry.EVENTS_MALFORMED.labels(group, partition.topic).inc()
            if batch:
                await apply(batch)
            await _record_lag(consumer, group)
            if fetched or not ready.is_set():
                await consumer.commit()
                ready.set()
    finally:
        await consumer.stop()
