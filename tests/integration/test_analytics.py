"""The analytics server counts what the other servers did, from their events on Kafka alone.

Each test runs the servers in this process on a database and an embedded broker of its own, so
the topics hold exactly the events of its writes. Nothing is mocked: the writes go through the
ticketing and approvals servers' tools, the events through their outboxes and a real broker,
and the analytics server reads them with its consumer group.
"""

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mcp.types as mt
import psycopg
from aiokafka import AIOKafkaProducer
from fastmcp import Client
from prometheus_client import REGISTRY

from schemas.analytics import Dashboard
from schemas.events import Event, Topic
from schemas.roles import Role
from servers.analytics.server import build_server as build_analytics
from servers.approvals.server import build_server as build_approvals
from servers.runtime.backends import embedded_kafka
from servers.runtime.settings import Settings
from servers.ticketing.server import build_server as build_ticketing
from servers.ticketing.tasks import scan_sla
from tests.conftest import (
    broker_process,
    fresh_database,
    on_own_broker,
    read_events,
    supportmesh_env,
)
from tests.integration.test_ticketing_tools import refused

Report = dict[str, Any]


@dataclass
class Mesh:
    settings: Settings
    ticketing: Client[Any]
    alice: Client[Any]  # an agent: asks for approvals
    bob: Client[Any]  # an approver
    analytics: Client[Any]

    async def report(self, tool: str, **arguments: Any) -> Report:
        result = await self.analytics.call_tool(tool, arguments)
        assert result.structured_content is not None
        return result.structured_content

    async def until(
        self, tool: str, done: Callable[[Report], bool], timeout: float = 60, **arguments: Any
    ) -> Report:
        """The report once ``done`` holds for it (events take a moment to arrive)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not done(report := await self.report(tool, **arguments)):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{tool} never got there: {report}")
            await asyncio.sleep(0.2)
        return report


@contextlib.asynccontextmanager
async def own_mesh(backends: Settings, tmp_path: Path) -> AsyncIterator[Mesh]:
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url, embedded_kafka(tmp_path) as bootstrap:
        settings = on_own_broker(backends, url, bootstrap, poll=0.1).model_copy(
            update={"metrics_sample_seconds": 0.5, "sla_scan_seconds": 3600.0}
        )
        alice = settings.model_copy(update={"actor": "alice", "role": Role.AGENT})
        bob = settings.model_copy(update={"actor": "bob", "role": Role.APPROVER})
        async with (
            Client(build_ticketing(settings)) as ticketing,
            Client(build_approvals(alice)) as as_alice,
            Client(build_approvals(bob)) as as_bob,
            Client(build_analytics(settings)) as analytics,
        ):
            yield Mesh(settings, ticketing, as_alice, as_bob, analytics)


async def call(client: Client[Any], tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert result.structured_content is not None
    return result.structured_content


async def a_morning_of_support(mesh: Mesh) -> dict[str, int]:
    """Three tickets and two approvals, as a support desk's tools would make them."""
    t = mesh.ticketing
    t1 = (
        await call(
            t,
            "create_ticket",
            subject="Refund for a broken lamp",
            description="It arrived broken.",
            channel="email",
            requester_email="mia.garcia@example.com",
        )
    )["id"]
    t2 = (await call(t, "create_ticket", subject="Where is my order?", description="d",
                     channel="chat", priority="high"))["id"]  # fmt: skip
    t3 = (await call(t, "create_ticket", subject="Card charged twice", description="d",
                     channel="chat", priority="urgent"))["id"]  # fmt: skip
    await call(t, "update_ticket", ticket_id=t1, status="open")
    await call(t, "add_comment", ticket_id=t1, body="We are on it.", public=True)
    await call(t, "update_ticket", ticket_id=t1, status="solved")
    await call(t, "update_ticket", ticket_id=t1, status="open")  # the customer wrote back
    await call(t, "update_ticket", ticket_id=t1, status="solved", add_tags=["category:refund"])
    await call(t, "add_comment", ticket_id=t2, body="It ships tomorrow.", public=True)
    await call(t, "add_comment", ticket_id=t3, body="Checking with billing.", public=False)
    await call(t, "close_ticket", ticket_id=t3)

    first = await call(
        mesh.alice,
        "request_approval",
        subject=f"ticket:{t1}",
        action_tool="refund_order",
        reason="broken on arrival",
        amount="120",
    )
    second = await call(
        mesh.alice,
        "request_approval",
        subject=f"ticket:{t3}",
        action_tool="credit_account",
        reason="double charge",
        amount="40",
    )
    await call(mesh.bob, "decide_approval", approval_id=first["id"], decision="approve")
    await call(mesh.bob, "decide_approval", approval_id=second["id"], decision="reject")
    return {"t1": t1, "t2": t2, "t3": t3}


def by_group(report: Report, field: str, *counts: str) -> dict[str | None, Any]:
    """The report's rows summed by one grouped field (over buckets)."""
    summed: dict[str | None, Any] = {}
    for row in report["rows"]:
        key = row["group"][field]
        values = [row[c] for c in counts] if len(counts) > 1 else row[counts[0]]
        if key in summed and len(counts) > 1:
            summed[key] = [a + b for a, b in zip(summed[key], values, strict=True)]
        elif key in summed:
            summed[key] += values
        else:
            summed[key] = values
    return summed


async def test_each_report_counts_what_the_servers_tools_did(
    backends: Settings, tmp_path: Path
) -> None:
    async with own_mesh(backends, tmp_path) as mesh:
        await a_morning_of_support(mesh)

        volume = await mesh.until(
            "ticket_volume",
            lambda r: r["totals"] == {"created": 3, "solved": 3, "reopened": 1},
            group_by=["channel"],
        )
        channels = by_group(volume, "channel", "created", "solved", "reopened")
        assert channels == {"email": [1, 2, 1], "chat": [2, 1, 0]}
        categories = await mesh.report("ticket_volume", group_by=["category"])
        assert by_group(categories, "category", "created")["refund"] == 1

        times = await mesh.report("resolution_times", group_by=["priority"])
        assert times["first_response"]["count"] == 2  # the two public replies
        assert times["resolution"]["count"] == 2  # t1 (solved again) and t3 (closed)
        assert 0 <= times["resolution"]["p50_seconds"] <= times["resolution"]["max_seconds"]

        approvals = await mesh.until(
            "approval_stats", lambda r: r["totals"]["rejected"] == 1, group_by=["action_tool"]
        )
        totals = approvals["totals"]
        assert (totals["requested"], totals["approved"], totals["expired"]) == (2, 1, 0)
        assert totals["decision_p50_seconds"] is not None
        tools = by_group(approvals, "action_tool", "approved", "rejected")
        assert tools == {"refund_order": [1, 0], "credit_account": [0, 1]}

        writes = await mesh.report("agent_actions", group_by=["tool", "actor"])
        counted = {(r["group"]["tool"], r["group"]["actor"]): r["count"] for r in writes["rows"]}
        assert counted == {
            ("create_ticket", "local-user"): 3,
            ("update_ticket", "local-user"): 4,
            ("add_comment", "local-user"): 3,
            ("close_ticket", "local-user"): 1,
            ("request_approval", "alice"): 2,
            ("decide_approval", "bob"): 2,
        }

        # every tool call, reads included, from the servers' minute samples
        calls = await mesh.until(
            "agent_actions",
            lambda r: by_group(r, "tool", "count").get("create_ticket") == 3,
            kind="calls",
            group_by=["tool", "source"],
        )
        servers = {(r["group"]["tool"], r["group"]["source"]) for r in calls["rows"]}
        assert ("decide_approval", "approvals") in servers

        # the messages to people: the public reply to the one requester with an address, and
        # each approval request to the approvers
        assert mesh.settings.kafka_bootstrap
        messages = await read_events(
            mesh.settings.kafka_bootstrap, Topic.NOTIFICATIONS_OUTBOUND.value, lambda e: len(e) >= 3
        )
        kinds = sorted((m.data["kind"], tuple(m.data["to"])) for m in messages)
        assert kinds == [
            ("approval.waiting", tuple(mesh.settings.notify_approvers)),
            ("approval.waiting", tuple(mesh.settings.notify_approvers)),
            ("ticket.reply", ("mia.garcia@example.com",)),
        ]

        text = (await mesh.analytics.read_resource("analytics://dashboard"))[0]
        dashboard = Dashboard.model_validate_json(text.text)  # type: ignore[union-attr]
        assert dashboard.tickets.created == 3 and dashboard.approvals.requested == 2
        assert dashboard.events_by_topic[Topic.CUSTOMER_REQUESTS.value] == 3
        assert dashboard.events_by_topic[Topic.NOTIFICATIONS_OUTBOUND.value] == 3


async def test_breached_sla_clocks_are_announced_once_and_counted_by_priority(
    backends: Settings, tmp_path: Path
) -> None:
    async with own_mesh(backends, tmp_path) as mesh:
        tickets = await a_morning_of_support(mesh)
        assert mesh.settings.postgres_url
        # Five hours pass for t2 (high: first reply due in 4 h, answered just now: late) and t3
        # (urgent: reply due in 1 h, none; resolution due in 4 h, closed just now: late).
        async with await psycopg.AsyncConnection.connect(mesh.settings.postgres_url) as db:
            await db.execute(
                "UPDATE ticketing.tickets SET created_at = created_at - interval '5 hours' "
                "WHERE id = ANY(%s)",
                [[tickets["t2"], tickets["t3"]]],
            )
            await db.commit()
        # The scan Celery beat sends (this process's worker is the session's: run it here).
        assert await scan_sla() == 3
        assert await scan_sla() == 0  # nothing is announced twice
        await mesh.until("sla_breaches", lambda r: r["total"] >= 3)
        await asyncio.sleep(1)
        breaches = await mesh.report("sla_breaches")
        assert breaches["total"] == 3
        listed = {(b["ticket_id"], b["clock"], b["priority"]) for b in breaches["breaches"]}
        assert listed == {
            (tickets["t2"], "first_response", "high"),
            (tickets["t3"], "first_response", "urgent"),
            (tickets["t3"], "resolution", "urgent"),
        }
        only_high = await mesh.report("sla_breaches", priority="high")
        assert only_high["total"] == 1
        assert mesh.settings.kafka_bootstrap
        events = await read_events(
            mesh.settings.kafka_bootstrap,
            Topic.AGENT_ACTIONS.value,
            lambda evs: sum(e.type == "ticket.sla_breached" for e in evs) >= 3,
        )
        assert sum(e.type == "ticket.sla_breached" for e in events) == 3


def applied(result: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "supportmesh_analytics_events":
            total += sum(
                s.value
                for s in metric.samples
                if s.name.endswith("_total") and s.labels["result"] == result
            )
    return total


async def every_event(bootstrap: str) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of every record on the broker's topics."""
    records = []
    for topic in Topic:
        events = await read_events(bootstrap, topic.value, lambda _: True, timeout=5)
        records += [(topic.value, e.subject.encode(), e.model_dump_json().encode()) for e in events]
    return records


async def test_events_delivered_twice_count_once_and_a_bad_one_is_skipped(
    backends: Settings, tmp_path: Path
) -> None:
    async with own_mesh(backends, tmp_path) as mesh:
        await a_morning_of_support(mesh)
        await mesh.until("approval_stats", lambda r: r["totals"]["rejected"] == 1)
        window = {
            "since": "2026-01-01T00:00:00Z",
            "until": "2027-01-01T00:00:00Z",
            "bucket": "week",
        }
        before = {
            tool: await mesh.report(tool, **window)
            for tool in ("ticket_volume", "approval_stats", "agent_actions")
        }
        assert mesh.settings.kafka_bootstrap
        records = [r for r in await every_event(mesh.settings.kafka_bootstrap)
                   if r[0] != Topic.SYSTEM_ANALYTICS.value]  # fmt: skip
        duplicates, skipped = applied("duplicate"), applied("skipped")
        # and two events no server of ours would write, which must not stop the consumer
        poison = [
            Event(type="ticket.created", source="x", subject="ticket/1", data={"ticket_id": 2**70}),
            Event(type="ticket.updated", source="x", subject="ticket/1",
                  data={"ticket_id": 1, "changes": {"status": "solved"}}),
        ]  # fmt: skip
        records += [(Topic.AGENT_ACTIONS.value, b"ticket/1", e.model_dump_json().encode())
                    for e in poison]  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=mesh.settings.kafka_bootstrap)
        await producer.start()
        try:
            for topic, key, value in records:  # everything again, as a redelivery would
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()
        deadline = asyncio.get_running_loop().time() + 60
        while (
            applied("duplicate") < duplicates + len(records) - 2 or applied("skipped") < skipped + 2
        ):
            assert asyncio.get_running_loop().time() < deadline, "the duplicates were not read"
            await asyncio.sleep(0.2)
        after = {tool: await mesh.report(tool, **window) for tool in before}
        assert after == before


async def test_a_rebuild_from_the_outboxes_equals_what_was_built_from_kafka(
    backends: Settings, tmp_path: Path
) -> None:
    async with own_mesh(backends, tmp_path) as mesh:
        await a_morning_of_support(mesh)
        await mesh.until("approval_stats", lambda r: r["totals"]["rejected"] == 1)
        await asyncio.sleep(1.5)  # the last samples, too
        window = {
            "since": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "until": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "bucket": "hour",
        }
        reports: list[tuple[str, dict[str, Any]]] = [
            ("ticket_volume", {"group_by": ["channel", "priority", "category"]}),
            ("resolution_times", {"group_by": ["priority"]}),
            ("sla_breaches", {}),
            ("agent_actions", {"group_by": ["tool", "actor", "source"]}),
            ("approval_stats", {"group_by": ["action_tool", "requested_by"]}),
        ]

        async def everything() -> list[Report]:
            return [await mesh.report(tool, **window, **args) for tool, args in reports]

        async def settled() -> list[Report]:
            """The reports once two reads a second apart agree (the SLA scan may still
            announce)."""
            while True:
                first = await everything()
                await asyncio.sleep(1)
                if first == await everything():
                    return first

        incremental = await settled()
        rebuild = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clients.cli", "analytics", "rebuild"],
            env=supportmesh_env(mesh.settings),
            capture_output=True,
            timeout=120,
        )
        assert rebuild.returncode == 0, rebuild.stderr.decode()[-3000:]
        assert b"ticketing" in rebuild.stdout
        assert await everything() == incremental


async def test_events_written_while_kafka_is_down_are_counted_when_it_is_back(
    backends: Settings, tmp_path: Path
) -> None:
    async with own_mesh(backends, tmp_path) as mesh:
        t = mesh.ticketing
        await call(t, "create_ticket", subject="before", description="d")
        await mesh.until("ticket_volume", lambda r: r["totals"]["created"] == 1)
        assert mesh.settings.kafka_bootstrap
        broker = broker_process(mesh.settings.kafka_bootstrap)
        broker.suspend()
        try:
            for i in range(5):  # the servers keep taking writes
                await call(t, "create_ticket", subject=f"during outage {i}", description="d")
            await asyncio.sleep(2)
            assert (await mesh.report("ticket_volume"))["totals"]["created"] == 1
        finally:
            broker.resume()
        await mesh.until("ticket_volume", lambda r: r["totals"]["created"] == 6, timeout=120)


async def test_a_bad_window_or_grouping_is_refused_naming_the_field(settings: Settings) -> None:
    async with Client(build_analytics(settings)) as analytics:
        assert (await refused(analytics, "ticket_volume", since="2026-12-02T00:00:00Z",
                              until="2026-12-01T00:00:00Z")).startswith(
            "invalid_argument: since: must be before until"
        )  # fmt: skip
        assert (
            await refused(analytics, "agent_actions", since="2016-01-01T00:00:00Z", bucket="hour")
        ).startswith("invalid_argument: bucket: ")
        assert (await refused(analytics, "ticket_volume", group_by=["assignee"])).startswith(
            "invalid_argument: group_by.0: "
        )
        assert (
            await refused(analytics, "agent_actions", kind="calls", group_by=["actor"])
        ).startswith("invalid_argument: group_by: calls (metrics samples) are not counted by")
        assert (await refused(analytics, "sla_breaches", since=1733000000)).startswith(
            "invalid_argument: since: "
        )
        briefing = await analytics.get_prompt("support-briefing", {"period": "week"})
        text = briefing.messages[0].content
        assert isinstance(text, mt.TextContent) and '"ticket_volume"' in text.text
        completed = await analytics.complete(
            mt.PromptReference(type="ref/prompt", name="support-briefing"),
            {"name": "period", "value": "w"},
        )
        assert completed.values == ["week"]
