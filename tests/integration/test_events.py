"""Events leave through the outbox and arrive on Kafka, read back by a real consumer."""

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psycopg
from fastmcp import Client

from schemas.events import Event, Topic
from servers.runtime.backends import embedded_kafka
from servers.runtime.database import open_pool
from servers.runtime.events import OutboxRelay, add_to_outbox, schema_with_outbox
from servers.runtime.settings import Settings
from servers.ticketing.server import build_server
from tests.conftest import broker_process, fresh_database, on_own_broker, read_events


def about(subject: str, types: set[str]) -> Any:
    def seen_all(events: list[Event]) -> bool:
        return types <= {e.type for e in events if e.subject == subject}

    return seen_all


async def test_every_write_reaches_kafka(ticketing: Client[Any], settings: Settings) -> None:
    assert settings.kafka_bootstrap
    created = await ticketing.call_tool(
        "create_ticket",
        {
            "subject": "Order never arrived",
            "description": "Ordered 3 weeks ago.",
            "customer_id": "yusuf_rossi_9620",
        },
    )
    assert created.structured_content
    tid = created.structured_content["id"]
    await ticketing.call_tool("update_ticket", {"ticket_id": tid, "status": "open"})
    await ticketing.call_tool(
        "add_comment", {"ticket_id": tid, "body": "Tracking it.", "public": True}
    )
    await ticketing.call_tool("close_ticket", {"ticket_id": tid})

    subject = f"ticket/{tid}"
    actions = await read_events(
        settings.kafka_bootstrap,
        "agent.actions",
        about(subject, {"ticket.created", "ticket.updated", "ticket.commented", "ticket.closed"}),
    )
    mine = [e for e in actions if e.subject == subject]
    assert [e.type for e in mine] == [
        "ticket.created",
        "ticket.updated",
        "ticket.commented",
        "ticket.closed",
    ]
    assert all(e.source == "ticketing" and e.data["actor"] == "local-user" for e in mine)
    assert mine[1].data["changes"] == {"status": ["new", "open"]}

    requests = await read_events(
        settings.kafka_bootstrap, "customer.requests", about(subject, {"ticket.created"})
    )
    request = next(e for e in requests if e.subject == subject)
    assert request.data["customer_id"] == "yusuf_rossi_9620"


async def test_trace_id_from_meta_travels_with_the_event(
    ticketing: Client[Any], settings: Settings
) -> None:
    assert settings.kafka_bootstrap
    trace = uuid.uuid4().hex
    created = await ticketing.call_tool(
        "create_ticket", {"subject": "Traced", "description": "d"}, meta={"trace_id": trace}
    )
    assert created.structured_content
    subject = f"ticket/{created.structured_content['id']}"
    events = await read_events(
        settings.kafka_bootstrap, "agent.actions", about(subject, {"ticket.created"})
    )
    assert next(e for e in events if e.subject == subject).trace_id == trace


async def test_events_carry_no_email_or_card_number(
    ticketing: Client[Any], settings: Settings
) -> None:
    assert settings.kafka_bootstrap
    created = await ticketing.call_tool(
        "create_ticket",
        {
            "subject": "Charge on 4111 1111 1111 1111, reply to mia.garcia@example.com",
            "description": "d",
        },
    )
    assert created.structured_content
    subject = f"ticket/{created.structured_content['id']}"
    events = await read_events(
        settings.kafka_bootstrap, "customer.requests", about(subject, {"ticket.created"})
    )
    sent = next(e for e in events if e.subject == subject).data["subject"]
    assert sent == "Charge on ****-****-****-1111, reply to m***@example.com"
    # the ticket itself keeps what the customer wrote
    assert "4111 1111 1111 1111" in created.structured_content["subject"]


async def unsent(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM ticketing.outbox WHERE sent_at IS NULL")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_events_written_while_kafka_is_down_arrive_when_it_is_back(
    backends: Settings, tmp_path: Path
) -> None:
    """A server with a broker of its own, which we stop (SIGSTOP: it answers nothing) and resume.

    Stopping the process, not killing it, keeps what the broker holds: the embedded Tansu keeps
    everything in memory, so a restarted one would be a different, empty broker.
    """
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url, embedded_kafka(tmp_path) as bootstrap:
        settings = on_own_broker(backends, url, bootstrap, poll=0.2)
        async with Client(build_server(settings)) as client:
            await client.call_tool("create_ticket", {"subject": "before", "description": "d"})
            await read_events(bootstrap, "customer.requests", lambda events: len(events) == 1)

            broker = broker_process(bootstrap)
            broker.suspend()
            try:
                ids = []
                for i in range(5):  # the server keeps taking writes
                    made = await client.call_tool(
                        "create_ticket", {"subject": f"during outage {i}", "description": "d"}
                    )
                    assert made.structured_content
                    ids.append(made.structured_content["id"])
                await asyncio.sleep(2)
                # two events a ticket (customer.requests, agent.actions): waiting, none lost
                assert await unsent(url) == 10
            finally:
                broker.resume()

            wanted = {f"ticket/{i}" for i in ids}
            events = await read_events(
                bootstrap,
                "customer.requests",
                lambda evs: wanted <= {e.subject for e in evs},
                timeout=90,
            )
            assert wanted <= {e.subject for e in events}
            for _ in range(100):
                if await unsent(url) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await unsent(url) == 0


async def test_two_relays_on_one_outbox_keep_a_tickets_events_in_commit_order(
    backends: Settings, tmp_path: Path
) -> None:
    """Replicas each run a relay; one publishes at a time, so a ticket's events arrive on
    Kafka in the order its writes committed (and none twice or lost)."""
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url, embedded_kafka(tmp_path) as bootstrap:
        settings = on_own_broker(backends, url, bootstrap, poll=0.05)
        async with Client(build_server(settings)) as client:
            pool = await open_pool(url, "ticketing")
            other = asyncio.create_task(OutboxRelay(pool, "ticketing", settings).run())
            try:
                made = await client.call_tool("create_ticket", {"subject": "s", "description": "d"})
                assert made.structured_content
                tid = made.structured_content["id"]
                await asyncio.gather(  # writes commit while the relays are publishing
                    *(
                        client.call_tool("add_comment", {"ticket_id": tid, "body": f"n{i}"})
                        for i in range(40)
                    )
                )
                subject = f"ticket/{tid}"
                events = await read_events(
                    bootstrap,
                    "agent.actions",
                    lambda evs: sum(e.subject == subject for e in evs) >= 41,
                    timeout=60,
                )
                async with pool.connection() as conn:
                    rows = await (
                        await conn.execute(
                            "SELECT id FROM outbox WHERE key = %s AND topic = 'agent.actions' "
                            "ORDER BY seq",
                            [subject],
                        )
                    ).fetchall()
            finally:
                other.cancel()
                await asyncio.gather(other, return_exceptions=True)
                await pool.close()
        assert [e.id for e in events if e.subject == subject] == [r["id"] for r in rows]


async def test_an_event_too_large_for_kafka_is_set_aside_and_the_next_ones_still_go(
    backends: Settings, tmp_path: Path
) -> None:
    """Kafka refuses a record over the producer's maximum request (1 MiB) every time: the relay
    sets it aside with the reason, instead of retrying it forever in front of the rest."""
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url, embedded_kafka(tmp_path) as bootstrap:
        settings = on_own_broker(backends, url, bootstrap, poll=0.05)
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        async with schema_with_outbox(settings, "bulky", migrations) as pool:
            huge = Event(type="x.huge", source="bulky", subject="x/1", data={"blob": "a" * 2**21})
            small = Event(type="x.small", source="bulky", subject="x/1", data={})
            async with pool.connection() as conn, conn.transaction():
                await add_to_outbox(
                    conn, [(Topic.AGENT_ACTIONS, huge), (Topic.AGENT_ACTIONS, small)]
                )
            events = await read_events(
                bootstrap, "agent.actions", lambda evs: any(e.id == small.id for e in evs)
            )
            assert huge.id not in {e.id for e in events}
            async with pool.connection() as conn:
                row = await (
                    await conn.execute(
                        "SELECT failed_at, error FROM outbox WHERE id = %s", [huge.id]
                    )
                ).fetchone()
            assert row and row["failed_at"] and "larger than" in row["error"]
