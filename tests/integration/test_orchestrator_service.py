"""The orchestrator service (``supportmesh orchestrator``) in subprocesses, over the five real
servers on streamable HTTP, the session's Kafka and PostgreSQL.

Each service here has a Kafka consumer group of its own that starts at the topics' end, so it
handles the tickets its test creates and none of the session's others.
"""

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastmcp import Client

from clients.orchestrator import OrchestratorClient, ServiceRefused
from orchestrator.graph import build_graph
from orchestrator.run import postgres_checkpointer, thread
from orchestrator.tasks import prune
from schemas.orchestrator import TicketSubmission
from schemas.roles import Role
from servers.crm.store import Crm
from servers.runtime.settings import Settings
from tests.conftest import (
    SERVED_DATABASES,
    SUPPORTMESH,
    order_status,
    served_url,
    stopped,
    supportmesh_env,
    token,
    wait_ready,
)
from tests.integration.test_orchestrator import agent, new_ticket

# Ticket texts on the demo store (servers/crm/demo): with the service's approval threshold at
# 50, a cancellation of #W9000001 waits for a human; the others are answered or acted on.
CANCEL = (
    "ada_quill_1001",
    "Cancel my order",
    "Please cancel order #W9000001, I ordered it by mistake.",
)
TEMPLATES = [
    CANCEL,
    ("ben_ortiz_1002", "Where is my order", "Hi, where is my order #W9000004? Has it shipped?"),
    (None, "Password", "How do I reset my password? I cannot log in to my account."),
    (
        "ben_ortiz_1002",
        "Desk lamp flickers",
        "Hi, the Desk Lamp from order #W9000004 flickers after a week. I'd like to return it "
        "and get my money back on PayPal please.",
    ),
    ("ada_quill_1001", "Refunds", "What is your refund policy for items that arrive damaged?"),
]
SCHEMAS = ("ticketing", "crm", "approvals", "memory")
__all__ = ["agent"]  # a fixture, shared with test_orchestrator.py


@pytest.fixture
def service_env(settings: Settings, urls: dict[str, str]) -> dict[str, str]:
    """One test's services: a consumer group of their own, from the topics' end."""
    return supportmesh_env(settings) | {
        "SUPPORTMESH_MCP_URLS": json.dumps(urls),
        "SUPPORTMESH_APPROVAL_THRESHOLD": "50",
        "SUPPORTMESH_ORCHESTRATOR_GROUP": f"orchestrator-test-{uuid.uuid4().hex[:8]}",
        "SUPPORTMESH_ORCHESTRATOR_OFFSET_RESET": "latest",
        "SUPPORTMESH_ORCHESTRATOR_CONCURRENCY": "8",
    }


@contextlib.contextmanager
def service(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``supportmesh orchestrator`` until the block exits; yields it and its URL once ready
    (its Kafka consumer holds its partitions)."""
    argv = [SUPPORTMESH, "orchestrator", "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    with stopped(proc):
        url = served_url(proc, "orchestrator", log, path="")
        wait_ready(proc, f"{url}/readyz", log, (200,))
        yield proc, url


def killed(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
async def lead(settings: Settings, urls: dict[str, str]) -> AsyncIterator[Client[Any]]:
    async with Client(urls["approvals"], auth=token(settings, Role.APPROVER, "lead")) as client:
        yield client


def api(settings: Settings, role: Role = Role.AGENT, subject: str = "frontdesk") -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {token(settings, role, subject)}"})


async def create(agent: Client[Any], template: tuple[str | None, str, str]) -> int:
    return await new_ticket(agent, *template)


async def runs(settings: Settings, tickets: list[int]) -> dict[int, dict[str, Any]]:
    assert settings.postgres_url
    async with await psycopg.AsyncConnection.connect(settings.postgres_url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cur.execute(
            "SELECT ticket_id, status, approval_id FROM orchestrator.runs "
            "WHERE ticket_id = ANY(%s)",
            [tickets],
        )
        return {row["ticket_id"]: row for row in await cur.fetchall()}


async def settled(
    settings: Settings, tickets: list[int], done: int | None = None, timeout: float = 180
) -> dict[int, dict[str, Any]]:
    """The tickets' runs once ``done`` of them (default: all) are resolved or waiting."""
    want = len(tickets) if done is None else done
    deadline = time.monotonic() + timeout
    while True:
        found = await runs(settings, tickets)
        finished = [r for r in found.values() if r["status"] in ("resolved", "waiting")]
        if len(finished) >= want:
            return found
        if time.monotonic() > deadline:
            statuses = sorted({r["status"] for r in found.values()})
            raise AssertionError(f"{len(finished)}/{want} settled, {len(found)} runs: {statuses}")
        await asyncio.sleep(0.2)


async def repeated_writes(urls: dict[str, str], since: datetime) -> list[Any]:
    """Writes the orchestrator made twice since ``since``: audit rows with the same tool,
    arguments and subject (a write repeated under its idempotency key leaves no new row)."""
    repeated: list[Any] = []
    for schema in SCHEMAS:
        database = SERVED_DATABASES[urls[schema]]  # memory has a database of its own
        async with await psycopg.AsyncConnection.connect(database) as conn:
            cur = await conn.execute(
                f"SELECT tool, subject, count(*) FROM {schema}.audit "
                "WHERE actor = 'orchestrator' AND at >= %s "
                "GROUP BY tool, arguments_hash, subject HAVING count(*) > 1",
                [since],
            )
            repeated += [(schema, *row) for row in await cur.fetchall()]
    return repeated


async def progress(settings: Settings, ticket_id: int, type: str) -> list[dict[str, Any]]:
    """The ticket's progress events of ``type`` in the orchestrator's outbox."""
    assert settings.postgres_url
    async with await psycopg.AsyncConnection.connect(settings.postgres_url) as conn:
        cur = await conn.execute(
            "SELECT event FROM orchestrator.outbox WHERE key = %s AND event->>'type' = %s "
            "ORDER BY seq",
            [f"ticket/{ticket_id}", type],
        )
        return [row[0] for row in await cur.fetchall()]


async def resolved_soon(settings: Settings, ticket_id: int, why: str) -> None:
    deadline = time.monotonic() + 120
    while (await runs(settings, [ticket_id]))[ticket_id]["status"] != "resolved":
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.2)


async def events_of(settings: Settings, ticket_id: int) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(settings.postgres_url or "") as conn:
        cur = await conn.execute(
            "SELECT event FROM orchestrator.outbox WHERE key = %s ORDER BY seq",
            [f"ticket/{ticket_id}"],
        )
        return [row[0] for row in await cur.fetchall()]


async def decide(lead: Client[Any], approval_id: str, decision: str) -> None:
    await lead.call_tool("decide_approval", {"approval_id": approval_id, "decision": decision})


async def test_a_ticket_created_on_the_ticketing_server_is_picked_up_and_handled(
    settings: Settings,
    service_env: dict[str, str],
    agent: Client[Any],
    demo_store: Crm,
    tmp_path: Path,
) -> None:
    with service(service_env, tmp_path / "service.log") as (_, url):
        ticket_id = await create(agent, TEMPLATES[1])  # nobody calls the service
        found = await settled(settings, [ticket_id])
        assert found[ticket_id]["status"] == "resolved"
        with api(settings) as http:
            shown = http.get(f"{url}/tickets/{ticket_id}").json()
        assert shown["status"] == "resolved" and shown["intent"] == "order_status"
        assert "Order #W9000004 is delivered" in shown["reply"]
        ticket = await agent.call_tool("get_ticket", {"ticket_id": ticket_id})
        assert ticket.structured_content is not None
        assert ticket.structured_content["status"] == "solved"


async def test_a_batch_survives_kill_9_with_no_write_repeated_and_no_ticket_lost(
    settings: Settings,
    urls: dict[str, str],
    service_env: dict[str, str],
    agent: Client[Any],
    lead: Client[Any],
    demo_store: Crm,
    tmp_path: Path,
) -> None:
    since = datetime.now().astimezone()
    with service(service_env, tmp_path / "killed.log") as (proc, _):
        tickets = [await create(agent, TEMPLATES[i % len(TEMPLATES)]) for i in range(100)]
        midway = await settled(settings, tickets, done=30)
        killed(proc)  # in the middle of the batch: runs in flight, others not started
    assert sum(r["status"] in ("resolved", "waiting") for r in midway.values()) < 100
    after_kill = await runs(settings, tickets)
    assert any(r["status"] in ("queued", "running") for r in after_kill.values())
    with service(service_env, tmp_path / "restarted.log"):
        found = await settled(settings, tickets)
    assert len(found) == 100  # none lost
    waiting = [r for r in found.values() if r["status"] == "waiting"]
    assert waiting and len(waiting) < 100
    assert await repeated_writes(urls, since) == []
    for ticket_id in tickets:  # each run ended once: one reply or one wait
        ends = await progress(settings, ticket_id, "run.resolved")
        ends += await progress(settings, ticket_id, "run.interrupted")
        assert len(ends) == 1, (ticket_id, ends)
    public = await agent.call_tool("get_ticket", {"ticket_id": tickets[1]})
    assert public.structured_content is not None
    assert public.structured_content["status"] == "solved"


async def test_two_replicas_handle_every_ticket_of_a_batch_exactly_once(
    settings: Settings,
    urls: dict[str, str],
    service_env: dict[str, str],
    agent: Client[Any],
    demo_store: Crm,
    tmp_path: Path,
) -> None:
    since = datetime.now().astimezone()
    with (
        service(service_env, tmp_path / "one.log"),
        service(service_env, tmp_path / "two.log"),
    ):
        tickets = [await create(agent, TEMPLATES[1 + i % 4]) for i in range(40)]
        found = await settled(settings, tickets)
    assert len(found) == 40
    runners: set[str] = set()
    for ticket_id in tickets:
        started = await progress(settings, ticket_id, "run.started")
        assert [e["data"]["how"] for e in started] == ["start"], (ticket_id, started)
        runners.add(started[0]["data"]["runner"])
    assert len(runners) == 2  # both replicas took a share
    assert await repeated_writes(urls, since) == []


async def test_an_approval_decided_while_the_service_is_down_resumes_once_it_is_back(
    settings: Settings,
    service_env: dict[str, str],
    agent: Client[Any],
    lead: Client[Any],
    demo_store: Crm,
    tmp_path: Path,
) -> None:
    with service(service_env, tmp_path / "before.log"):
        ticket_id = await create(agent, CANCEL)
        paused = (await settled(settings, [ticket_id]))[ticket_id]
    assert paused["status"] == "waiting"
    await decide(lead, paused["approval_id"], "approve")  # nobody is there to hear it
    with service(service_env, tmp_path / "after.log"):
        await resolved_soon(settings, ticket_id, "not resumed")
    assert (await order_status(demo_store, "#W9000001")) == "cancelled"
    assert len(await progress(settings, ticket_id, "run.resolved")) == 1


@pytest.fixture
def running_service(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with service(service_env, tmp_path / "service.log") as (_, url):
        yield url


async def test_only_an_approver_resumes_and_only_on_a_decision_the_approvals_server_holds(
    settings: Settings,
    running_service: str,
    agent: Client[Any],
    lead: Client[Any],
    demo_store: Crm,
) -> None:
    url = running_service
    paused_id = await create(agent, CANCEL)
    other_id = await create(agent, CANCEL)
    found = await settled(settings, [paused_id, other_id])
    approval_id = found[paused_id]["approval_id"]
    resume = f"{url}/tickets/{paused_id}/resume"
    with api(settings, Role.APPROVER, "lead") as approver, api(settings) as agent_http:
        refused = agent_http.post(resume, json={"approval_id": approval_id})
        assert refused.status_code == 403 and refused.json()["error"] == "permission_denied"
        assert httpx.post(resume, json={"approval_id": approval_id}).status_code == 401
        forged = approver.post(resume, json={"approval_id": "apr_" + "0" * 32})
        assert forged.status_code == 404 and forged.json()["field"] == "approval_id"
        undecided = approver.post(resume, json={"approval_id": approval_id})
        assert undecided.status_code == 409 and "not decided" in undecided.json()["message"]
        claimed = approver.post(resume, json={"approval_id": approval_id, "decision": "approve"})
        assert claimed.status_code == 400 and claimed.json()["field"] == "decision"
        other = approver.post(resume, json={"approval_id": found[other_id]["approval_id"]})
        assert other.status_code == 409 and other.json()["field"] == "approval_id"
        await decide(lead, approval_id, "reject")
        accepted = approver.post(resume, json={"approval_id": approval_id})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["decision"] == "rejected"
        assert accepted.json()["decided_by"] == "lead"
    await resolved_soon(settings, paused_id, "not resumed after the rejection")
    assert await order_status(demo_store, "#W9000001") == "pending"  # rejected: not cancelled


async def test_a_tickets_event_stream_shows_its_nodes_in_order_and_ends_on_resolve_or_interrupt(
    settings: Settings,
    running_service: str,
    demo_store: Crm,
) -> None:
    """Through the typed client (``clients.orchestrator``), then bad input over plain HTTP."""
    url = running_service
    async with OrchestratorClient(url, token(settings, Role.AGENT, "frontdesk")) as service:
        customer, subject, description = TEMPLATES[1]
        submitted = await service.submit(
            TicketSubmission(subject=subject, description=description, customer_id=customer),
            idempotency_key="stream-test",
        )
        again = await service.submit(
            TicketSubmission(subject=subject, description=description, customer_id=customer),
            idempotency_key="stream-test",
        )
        assert again.ticket_id == submitted.ticket_id  # a retried submission opens one ticket
        events = [e async for e in service.events(submitted.ticket_id)]
        finished = [
            e.event["data"]["node"]
            for e in events
            if e.type == "node.finished" and "within" not in e.event["data"]
        ]
        assert finished[:3] == ["intake", "triage", "research"]
        assert finished[-2:] == ["quality", "resolve"]
        assert events[0].type == "run.started" and events[-1].type == "run.resolved"
        assert any(e.type == "tool.called" for e in events)
        later = [e async for e in service.events(submitted.ticket_id, after=events[-2].id)]
        assert [e.id for e in later] == [events[-1].id]  # Last-Event-ID continues
        run = await service.ticket(submitted.ticket_id)
        assert run.status == "resolved" and run.reply and run.intent
        history = await service.history(submitted.ticket_id)
        assert history.checkpoints[0].next == [] and len(history.checkpoints) > 5

        paused = await service.submit(
            TicketSubmission(subject=CANCEL[1], description=CANCEL[2], customer_id=CANCEL[0])
        )
        waiting = await service.until_settled(paused.ticket_id)
        assert waiting.status == "waiting" and waiting.pending_approval
        assert waiting.pending_approval["action_requests"][0]["name"] == "cancel_pending_order"
        with pytest.raises(ServiceRefused) as refused:
            await service.resume(paused.ticket_id, "apr_" + "0" * 32)
        assert refused.value.status == 403 and refused.value.error.error == "permission_denied"

    with api(settings) as http:
        bad = http.post(f"{url}/tickets", json={"subject": "", "description": "x"})
        assert bad.status_code == 400 and bad.json()["field"] == "subject"
        for bad_id in ("abc", "²", "0", str(2**63)):
            refused_id = http.get(f"{url}/tickets/{bad_id}")
            assert refused_id.status_code == 400 and refused_id.json()["field"] == "ticket_id"
        too_many = http.get(f"{url}/tickets/{submitted.ticket_id}/history?limit=²")
        assert too_many.status_code == 400 and too_many.json()["field"] == "limit"


async def test_pruning_keeps_the_last_checkpoint_of_finished_threads_and_paused_ones_whole(
    settings: Settings,
    running_service: str,
    agent: Client[Any],
    lead: Client[Any],
    demo_store: Crm,
) -> None:
    assert settings.postgres_url
    done_id = await create(agent, TEMPLATES[1])
    paused_id = await create(agent, CANCEL)
    found = await settled(settings, [done_id, paused_id])
    assert found[paused_id]["status"] == "waiting"

    async def checkpoints(ticket_id: int) -> int:
        async with await psycopg.AsyncConnection.connect(settings.postgres_url or "") as conn:
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM orchestrator.checkpoints WHERE thread_id = %s",
                    [str(ticket_id)],
                )
            ).fetchone()
        return int(row[0]) if row else 0

    async with postgres_checkpointer(settings.postgres_url) as saver:
        graph = build_graph(saver)
        before = (await graph.aget_state(thread(done_id))).values
        paused_before = await checkpoints(paused_id)
        assert await checkpoints(done_id) > 5
        prune(settings.postgres_url, 0)
        assert await checkpoints(done_id) == 1
        assert (await graph.aget_state(thread(done_id))).values == before
        assert await checkpoints(paused_id) == paused_before
    await decide(lead, found[paused_id]["approval_id"], "approve")
    await resolved_soon(settings, paused_id, "the paused thread did not resume after pruning")


async def checkpoint_count(settings: Settings, ticket_id: int) -> int:
    async with await psycopg.AsyncConnection.connect(settings.postgres_url or "") as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM orchestrator.checkpoints WHERE thread_id = %s",
                [str(ticket_id)],
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def test_the_services_beat_task_prunes_resolved_tickets_by_itself(
    settings: Settings,
    service_env: dict[str, str],
    agent: Client[Any],
    demo_store: Crm,
    tmp_path: Path,
) -> None:
    env = service_env | {
        "SUPPORTMESH_CHECKPOINT_RETENTION_SECONDS": "0",
        "SUPPORTMESH_CHECKPOINT_PRUNE_SECONDS": "1",
    }
    with service(env, tmp_path / "service.log"):
        done_id = await create(agent, TEMPLATES[1])
        await settled(settings, [done_id])
        deadline = time.monotonic() + 60
        while await checkpoint_count(settings, done_id) != 1:  # Celery beat, then the worker
            assert time.monotonic() < deadline, "not pruned by the service's beat task"
            await asyncio.sleep(0.2)
    (resolved,) = await progress(settings, done_id, "run.resolved")
    async with postgres_checkpointer(settings.postgres_url or "") as saver:
        state = (await build_graph(saver).aget_state(thread(done_id))).values
    assert state["reply"]["text"] == resolved["data"]["reply"]


async def test_an_admin_replays_a_ticket_from_a_checkpoint_without_repeating_its_writes(
    settings: Settings,
    urls: dict[str, str],
    running_service: str,
    demo_store: Crm,
) -> None:
    url = running_service
    since = datetime.now().astimezone()
    with api(settings) as http:
        ticket_id = http.post(
            f"{url}/tickets",
            json={"subject": TEMPLATES[2][1], "description": TEMPLATES[2][2]},
            headers={"Idempotency-Key": f"replay-{uuid.uuid4()}"},
        ).json()["ticket_id"]
        await settled(settings, [ticket_id])
        first = http.get(f"{url}/tickets/{ticket_id}").json()
        assert first["status"] == "resolved"
        history = http.get(f"{url}/tickets/{ticket_id}/history").json()["checkpoints"]
        chosen = next(c for c in history if c["next"] == ["solution"])
        refused = http.post(
            f"{url}/tickets/{ticket_id}/replay", json={"checkpoint_id": chosen["checkpoint_id"]}
        )
        assert refused.status_code == 403
    with api(settings, Role.ADMIN, "ops") as admin:
        unknown = admin.post(f"{url}/tickets/{ticket_id}/replay", json={"checkpoint_id": "nope"})
        assert unknown.status_code == 404 and unknown.json()["field"] == "checkpoint_id"
        replay = admin.post(
            f"{url}/tickets/{ticket_id}/replay", json={"checkpoint_id": chosen["checkpoint_id"]}
        )
        assert replay.status_code == 202, replay.text
    deadline = time.monotonic() + 60
    while len(await progress(settings, ticket_id, "run.resolved")) < 2:
        assert time.monotonic() < deadline, (
            "the replay did not run to the end",
            [
                (e["type"], e["data"].get("node"), e["data"].get("how"))
                for e in await events_of(settings, ticket_id)
            ][-12:],
        )
        await asyncio.sleep(0.2)
    started = await progress(settings, ticket_id, "run.started")
    assert [e["data"]["how"] for e in started] == [
        "start",
        f"replay from {chosen['checkpoint_id']}",
    ]
    with api(settings) as http:
        again = http.get(f"{url}/tickets/{ticket_id}").json()
    assert again["outcome"] == first["outcome"] and again["reply"] == first["reply"]
    assert await repeated_writes(urls, since) == []  # the reply and status were not written again
