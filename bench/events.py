"""Events from the outbox to Kafka, and from a committed write to an analytics tool's answer.

    python -m bench.events [--events 20000] [--rate 500] [--seconds 10]

On embedded backends in a fresh data directory (or the configured ones), three measurements,
each beside a raw aiokafka baseline in the same run:

- relay throughput: ``--events`` events committed to an outbox while no relay runs, then one
  ``OutboxRelay`` drains them (claim a batch, publish with acks=all, mark sent); events/s from
  its start until the outbox is empty. Baseline: one aiokafka producer with the same settings
  sending the same records as fast as it can.
- end-to-end lag: ``--rate`` events a second for ``--seconds``, each committed in its own
  transaction as a tool's write is (a ``ticket.sla_breached`` event), published by the relay,
  read by the analytics server's consumer and applied; lag is the time from the write's commit
  to the first ``sla_breaches`` answer that lists it (the tool is polled every 20 ms through an
  MCP client). Baseline: records produced at the same rate straight to Kafka (send_and_wait)
  and read by a plain consumer; lag from send to receipt.

Targets (issue 16): relay >= 5,000 events/s, lag p99 <= 1 s.
"""

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from fastmcp import Client

from bench.orchestrator import quantile
from schemas.events import Event, Topic
from servers.analytics.server import build_server as build_analytics
from servers.runtime.backends import start_backends
from servers.runtime.database import Pool, migrate_and_open
from servers.runtime.events import (
    COUNT_UNSENT,
    OutboxRelay,
    add_to_outbox,
    ensure_topics,
    new_producer,
    schema_with_outbox,
)
from servers.runtime.serve import event_loop_factory
from servers.runtime.settings import Settings


def breach(number: int, run: str) -> Event:
    """An event the analytics server applies and lists: a breached SLA clock."""
    return Event(
        type="ticket.sla_breached",
        source="bench",
        subject=f"ticket/{number}",
        data={
            "ticket_id": number,
            "clock": "first_response",
            "priority": "normal",
            "due_at": datetime.now(UTC).isoformat(),
            "assignee": run,
            "tool": "scan_sla",
            "actor": "bench",
        },
    )


async def fill_outbox(pool: Pool, events: int) -> None:
    for start in range(0, events, 500):
        batch = [(Topic.AGENT_ACTIONS, breach(n, "fill")) for n in range(start, start + 500)]
        async with pool.connection() as conn, conn.transaction():
            await add_to_outbox(conn, batch[: events - start])


async def unsent(pool: Pool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(COUNT_UNSENT)).fetchone()
    return int(row["n"]) if row else 0


async def relay_throughput(settings: Settings, migrations: Path, events: int) -> float:
    assert settings.postgres_url
    pool = await migrate_and_open(settings.postgres_url, "bench_relay", migrations)
    try:
        await fill_outbox(pool, events)
        relay = OutboxRelay(pool, "bench_relay", settings)
        started = time.perf_counter()
        relaying = asyncio.create_task(relay.run())
        while True:  # until the outbox is empty
            if not await unsent(pool):
                break
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        return events / seconds
    finally:
        await pool.close()


async def raw_throughput(settings: Settings, events: int) -> float:
    records = [(e.subject.encode(), e.model_dump_json().encode()) for e in
               (breach(n, "raw") for n in range(events))]  # fmt: skip
    producer = new_producer(settings)
    await producer.start()
    try:
        started = time.perf_counter()
        sends = [
            await producer.send(Topic.AGENT_ACTIONS.value, value, key=key) for key, value in records
        ]
        await asyncio.gather(*sends)
        return events / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def analytics_lag(
    settings: Settings, migrations: Path, rate: float, seconds: float
) -> list[float]:
    run = uuid.uuid4().hex[:8]
    committed: dict[int, float] = {}
    seen: dict[int, float] = {}
    since = datetime.now(UTC).isoformat()
    async with (
        schema_with_outbox(settings, "bench_source", migrations) as pool,
        Client(build_analytics(settings)) as analytics,
    ):

        async def listed() -> set[int]:
            answer = await analytics.call_tool("sla_breaches", {"since": since, "limit": 500})
            assert answer.structured_content is not None
            breaches = answer.structured_content["breaches"]
            return {b["ticket_id"] for b in breaches if b["assignee"] == run}

        async def write(number: int) -> None:
            async with pool.connection() as conn, conn.transaction():
                await add_to_outbox(conn, [(Topic.AGENT_ACTIONS, breach(number, run))])
            committed[number] = time.perf_counter()

        await write(0)  # the consumer has joined once the first one is listed
        while True:
            if 0 in await listed():
                break
            await asyncio.sleep(0.1)
        committed.clear()
        total = int(rate * seconds)

        async def poll() -> None:
            while len(seen) < total:
                found = await listed()
                now = time.perf_counter()
                for number in found - seen.keys():
                    seen[number] = now
                await asyncio.sleep(0.02)

        polling = asyncio.create_task(poll())
        started = time.perf_counter()
        for number in range(1, total + 1):
            await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
            await write(number)
        await asyncio.wait_for(polling, timeout=120)
    return [seen[n] - committed[n] for n in committed]


async def raw_lag(settings: Settings, rate: float, seconds: float) -> list[float]:
    assert settings.kafka_bootstrap
    topic = Topic.SYSTEM_ANALYTICS.value  # nobody else reads it in this run any more
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    while True:  # until the group has given it its partitions
        if consumer.assignment():
            break
        await asyncio.sleep(0.05)
    await consumer.seek_to_end()
    producer = new_producer(settings)
    await producer.start()
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    total = int(rate * seconds)

    async def receive() -> None:
        while len(received) < total:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                for record in records:
                    if record.key and record.key.decode() in sent:
                        received.setdefault(record.key.decode(), now)

    receiving = asyncio.create_task(receive())
    try:
        started = time.perf_counter()
        for number in range(total):
            await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
            key = f"raw/{number}"
            sent[key] = time.perf_counter()
            await producer.send_and_wait(topic, b"{}", key=key.encode())
        await asyncio.wait_for(receiving, timeout=120)
    finally:
        await producer.stop()
        await consumer.stop()
    return [received[k] - sent[k] for k in sent]


def summary(lags: list[float]) -> str:
    return (
        f"p50 {quantile(lags, 0.5) * 1000:.0f} ms, p99 {quantile(lags, 0.99) * 1000:.0f} ms, "
        f"max {max(lags) * 1000:.0f} ms"
    )


async def main(args: argparse.Namespace, settings: Settings, migrations: Path) -> None:
    assert settings.kafka_bootstrap
    await ensure_topics(settings.kafka_bootstrap)
    print(f"end-to-end lag, {args.rate:.0f} events/s for {args.seconds:.0f} s:")
    lags = await analytics_lag(settings, migrations, args.rate, args.seconds)
    baseline = await raw_lag(settings, args.rate, args.seconds)
    print(f"  write committed -> listed by sla_breaches   {summary(lags)}")
    print(f"  raw aiokafka send -> consumer receipt      {summary(baseline)}")
    print(f"relay throughput, {args.events} events:")
    relayed = await relay_throughput(settings, migrations, args.events)
    raw = await raw_throughput(settings, args.events)
    print(f"  outbox relay           {relayed:8.0f} events/s")
    print(f"  raw aiokafka producer  {raw:8.0f} events/s   (relay {relayed / raw:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        migrations = Path(workdir) / "migrations"
        migrations.mkdir()
        with start_backends(Settings(data_dir=Path(workdir) / "data")) as ready:
            tuned = ready.model_copy(update={"metrics_sample_seconds": 3600.0})
            # uvloop, as the servers' processes run (supportmesh serve / up)
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(main(arguments, tuned, migrations))
