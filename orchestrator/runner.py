"""The orchestrator service's runs: which tickets have work to do, and the runner that does it.

The ``runs`` table (this schema) is the service's durable inbox: a ticket to start, a decision
to resume on, a checkpoint an admin replays from, each sets the ticket's ``wake``. Runners, in
any replica, take due tickets and run them through the graph:

- one runner per ticket at a time: the ticket's lease (``run.lease``, a PostgreSQL advisory lock
  on a connection held for the run) is taken first, and the row claimed under it;
- a runner that dies leaves its row ``running`` with the lease free: the next runner to look
  takes it over and continues from the last checkpoint (``durability="sync"``), where every
  write's idempotency key makes a repeated node change nothing;
- a run that fails because a server stays unavailable is tried again later, with backoff.

Every step of a run is also an event on ``agent.actions``, through this schema's outbox: run
started, node started and finished, each tool call, interrupted (waiting for a human), resolved
or failed. The ticket's event stream (``GET /tickets/{id}/events``) reads them back.
"""

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from prometheus_client import Counter, Gauge, Histogram

from orchestrator.graph import RunContext
from orchestrator.mesh import RUN_TRACE
from orchestrator.run import Busy, describe, lease, start_input, thread
from orchestrator.state import TicketState
from orchestrator.tracing import run_span
from schemas.events import Event, Topic
from servers.runtime.database import Pool
from servers.runtime.events import add_to_outbox

log = logging.getLogger(__name__)

Graph = CompiledStateGraph[TicketState, RunContext, TicketState, TicketState]
SOURCE = "orchestrator"
WAKE_CHANNEL = "orchestrator_runs"
POLL_SECONDS = 1.0  # how often runners look for work nobody announced (a dead runner's)
BUSY_SECONDS = 2.0  # a ticket another runner holds is not tried again before this
MAX_ATTEMPTS = 5  # runs failed in a row before a ticket is left 'failed' for a human
TERMINAL = ("run.resolved", "run.interrupted", "run.failed")
RUNNER = f"{socket.gethostname()}:{os.getpid()}"  # which replica ran a run, in its events

RUNS = Counter("supportmesh_orchestrator_runs_total", "Runs of tickets by how they ended", ["end"])
RUN_SECONDS = Histogram(
    "supportmesh_orchestrator_run_seconds",
    "Time of one run of a ticket (start or resume to resolved or waiting)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RUNNING = Gauge("supportmesh_orchestrator_running", "Tickets this process is running now")

ENQUEUE = """
    INSERT INTO runs (ticket_id, trace_id, submitted_by) VALUES (%s, %s, %s)
    ON CONFLICT (ticket_id) DO NOTHING
"""
WAKE_ON_DECISION = """
    UPDATE runs SET wake = true, updated_at = now()
    WHERE ticket_id = %s AND status IN ('queued', 'running', 'waiting')
"""
WAKE_FOR_REPLAY = """
    UPDATE runs SET wake = true, replay_from = %s, attempts = 0, not_before = NULL,
        updated_at = now()
    WHERE ticket_id = %s
"""
NOTIFY = f"SELECT pg_notify('{WAKE_CHANNEL}', '')"
DUE = """
    SELECT ticket_id FROM runs
    WHERE (wake OR status = 'running') AND (not_before IS NULL OR not_before <= now())
      AND NOT ticket_id = ANY(%s)
    ORDER BY updated_at LIMIT %s
"""
CLAIM = """
    WITH before AS (
        SELECT ticket_id, replay_from, approval_id FROM runs WHERE ticket_id = %s FOR UPDATE
    )
    UPDATE runs SET wake = false, status = 'running', replay_from = NULL,
        attempts = runs.attempts + 1, not_before = NULL, error = NULL, updated_at = now()
    FROM before
    WHERE runs.ticket_id = before.ticket_id AND (runs.wake OR runs.status = 'running')
      AND (runs.not_before IS NULL OR runs.not_before <= now())
    RETURNING runs.trace_id, before.replay_from, before.approval_id
"""
FINISH = """
    UPDATE runs SET status = %(status)s, node = %(node)s, approval_id = %(approval_id)s,
        attempts = 0, updated_at = now(),
        finished_at = CASE WHEN %(status)s = 'resolved' THEN now() END
    WHERE ticket_id = %(ticket_id)s
"""
FAIL = """
    UPDATE runs SET error = %(error)s, updated_at = now(),
        status = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'queued' END,
        wake = attempts < %(max)s,
        not_before = now() + make_interval(secs => %(backoff)s)
    WHERE ticket_id = %(ticket_id)s
    RETURNING status
"""
GET_RUN = """
    SELECT ticket_id, status, approval_id, node, trace_id, attempts, error, submitted_by,
        created_at, updated_at, finished_at
    FROM runs WHERE ticket_id = %s
"""
EVENTS_AFTER = """
    SELECT seq, event FROM outbox WHERE key = %s AND seq > %s ORDER BY seq LIMIT 500
"""
HAS_EVENT = "SELECT 1 FROM outbox WHERE key = %s AND seq = %s"
# The run has ended (resolved or failed, and nothing woke it since) with no event after ``seq``.
ENDED_AFTER = """
    SELECT 1 FROM runs
    WHERE ticket_id = %s AND status IN ('resolved', 'failed') AND NOT wake
      AND NOT EXISTS (SELECT 1 FROM outbox WHERE key = %s AND seq > %s)
"""


def subject(ticket_id: int) -> str:
    return f"ticket/{ticket_id}"


async def enqueue(
    conn: psycopg.AsyncConnection[Any], ticket_id: int, submitted_by: str | None
) -> bool:
    """Add the ticket's run (False if it has one already) and wake the runners."""
    cur = await conn.execute(ENQUEUE, [ticket_id, uuid.uuid4().hex, submitted_by])
    await conn.execute(NOTIFY)
    return cur.rowcount == 1


async def wake_on_decision(conn: psycopg.AsyncConnection[Any], ticket_id: int) -> bool:
    """Wake the ticket's run: a decision on its approval arrived (the run reads it back)."""
    cur = await conn.execute(WAKE_ON_DECISION, [ticket_id])
    await conn.execute(NOTIFY)
    return cur.rowcount == 1


async def wake_for_replay(
    conn: psycopg.AsyncConnection[Any], ticket_id: int, checkpoint_id: str
) -> None:
    await conn.execute(WAKE_FOR_REPLAY, [checkpoint_id, ticket_id])
    await conn.execute(NOTIFY)


async def get_run(pool: Pool, ticket_id: int) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        return await (await conn.execute(GET_RUN, [ticket_id])).fetchone()


async def events_after(pool: Pool, ticket_id: int, seq: int) -> list[tuple[int, dict[str, Any]]]:
    """The ticket's progress events after ``seq`` (the outbox's order), oldest first."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(EVENTS_AFTER, [subject(ticket_id), seq])).fetchall()
    return [(row["seq"], row["event"]) for row in rows]


async def has_event(pool: Pool, ticket_id: int, seq: int) -> bool:
    """Whether ``seq`` is the id of one of the ticket's progress events."""
    async with pool.connection() as conn:
        return (
            await (await conn.execute(HAS_EVENT, [subject(ticket_id), seq])).fetchone() is not None
        )


async def ended_after(pool: Pool, ticket_id: int, seq: int) -> bool:
    """Whether the ticket's run has ended with nothing after event ``seq`` (a stream that
    follows it would wait forever)."""
    async with pool.connection() as conn:
        found = await conn.execute(ENDED_AFTER, [ticket_id, subject(ticket_id), seq])
        return await found.fetchone() is not None


def pending_approval(snapshot: Any) -> str | None:
    """The approval a paused thread waits for, from its interrupt."""
    for pending in snapshot.interrupts:
        if isinstance(pending.value, dict) and "approval_id" in pending.value:
            return str(pending.value["approval_id"])
    return None


@dataclass
class Runner:
    """Runs due tickets, up to ``concurrency`` at once, until cancelled."""

    pool: Pool
    postgres_url: str
    graph: Graph
    context: RunContext
    concurrency: int
    due: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[int, "asyncio.Task[None]"] = field(default_factory=dict)
    busy_until: dict[int, float] = field(default_factory=dict)

    async def run_forever(self) -> None:
        listening = asyncio.create_task(self._listen(), name="orchestrator-wake")
        try:
            while True:
                self.due.clear()
                free = self.concurrency - len(self.running)
                if free > 0:
                    for ticket_id in await self._due_tickets(free):
                        task = asyncio.create_task(self.advance(ticket_id))
                        self.running[ticket_id] = task
                        task.add_done_callback(functools.partial(self._done, ticket_id))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.due.wait(), POLL_SECONDS)
        finally:
            listening.cancel()
            for task in [listening, *self.running.values()]:
                task.cancel()
            await asyncio.gather(listening, *self.running.values(), return_exceptions=True)

    def _done(self, ticket_id: int, _: "asyncio.Task[None]") -> None:
        self.running.pop(ticket_id, None)
        self.due.set()

    async def _due_tickets(self, limit: int) -> list[int]:
        now = time.monotonic()
        self.busy_until = {t: until for t, until in self.busy_until.items() if until > now}
        skip = [*self.running, *self.busy_until]
        try:
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(DUE, [skip, limit])).fetchall()
        except psycopg.OperationalError as exc:
            log.warning("cannot look for due tickets: %s", exc)
            return []
        return [row["ticket_id"] for row in rows]

    async def _listen(self) -> None:
        """Set ``due`` whenever a ticket is woken anywhere (another replica, the consumer)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.postgres_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    async for _ in conn.notifies():
                        self.due.set()
            except psycopg.OperationalError as exc:
                log.warning("wake-up listener lost PostgreSQL: %s; polling meanwhile", exc)
                await asyncio.sleep(POLL_SECONDS)

    async def advance(self, ticket_id: int) -> None:
        """Take the ticket's lease and run it as far as it goes now; nothing if another runner
        has it or it has nothing to do."""
        try:
            async with lease(self.postgres_url, ticket_id):
                async with self.pool.connection() as conn:
                    claimed = await (await conn.execute(CLAIM, [ticket_id])).fetchone()
                if claimed is None:
                    return
                RUNNING.inc()
                started = time.perf_counter()
                trace = RUN_TRACE.set(claimed["trace_id"])
                try:
                    with run_span(ticket_id, claimed["trace_id"]):
                        end = await self._run(ticket_id, claimed)
                except Exception as exc:  # the run failed: recorded and tried again later
                    end = await self._failed(ticket_id, exc)
                finally:
                    RUN_TRACE.reset(trace)
                    RUNNING.dec()
                RUNS.labels(end).inc()
                RUN_SECONDS.observe(time.perf_counter() - started)
        except Busy:
            self.busy_until[ticket_id] = time.monotonic() + BUSY_SECONDS
        except psycopg.OperationalError as exc:
            log.warning("ticket %s: PostgreSQL unavailable: %s", ticket_id, exc)

    async def _run(self, ticket_id: int, claimed: dict[str, Any]) -> str:
        config: RunnableConfig = thread(ticket_id)
        if claimed["replay_from"]:
            how, start = f"replay from {claimed['replay_from']}", None
            config = {
                "configurable": {
                    "thread_id": str(ticket_id),
                    "checkpoint_id": claimed["replay_from"],
                }
            }
        else:
            # A paused run is woken only when a decision arrived: it resumes, and the graph
            # reads the decision back from the approvals server itself.
            found = await start_input(
                self.graph, ticket_id, resume={"approval_id": claimed["approval_id"]}
            )
            if found is None:
                return await self._finished(ticket_id, await self.graph.aget_state(config))
            how, start = found
        # Events are written a node at a time (one transaction, one wake-up of the relay),
        # and the last ones together with the run's end.
        pending = [progress(ticket_id, "run.started", {"how": how, "runner": RUNNER})]
        stream = self.graph.astream(
            start,
            config,
            context=self.context,
            durability="sync",
            stream_mode=["tasks", "custom"],
            subgraphs=True,  # the research nodes (knowledge, crm, memory) and their calls too
        )
        item: dict[str, Any]
        async for namespace, mode, item in stream:  # type: ignore[assignment]
            within = {"within": namespace[0].split(":")[0]} if namespace else {}
            if mode == "custom":
                pending.append(progress(ticket_id, "tool.called", {**item, **within}))
            elif "input" in item:
                pending.append(
                    progress(ticket_id, "node.started", {"node": item["name"], **within})
                )
            elif not item["interrupts"]:
                result = item["result"] if isinstance(item["result"], dict) else {}
                finished = {
                    "node": item["name"],
                    **within,
                    "summary": describe(item["name"], result),
                    "decisions": result.get("decisions", []),
                    "error": str(item["error"]) if item["error"] else None,
                }
                pending.append(progress(ticket_id, "node.finished", finished))
                if not namespace:
                    async with self.pool.connection() as conn:
                        await add_to_outbox(conn, pending)
                    pending = []
        snapshot = await self.graph.aget_state(thread(ticket_id))
        return await self._finished(ticket_id, snapshot, pending)

    async def _finished(
        self, ticket_id: int, snapshot: Any, pending: list[tuple[Topic, Event]] | None = None
    ) -> str:
        """Record where the run stopped, waiting for a human or resolved, with the run's last
        events (``pending``) and its end."""
        approval_id = pending_approval(snapshot)
        status = "waiting" if snapshot.interrupts else "resolved" if not snapshot.next else None
        if status is None:
            raise RuntimeError(f"the run stopped before {snapshot.next} with no interrupt")
        decisions = snapshot.values.get("decisions", [])
        # The end's event id comes from the checkpoint it describes: a run after a crash that
        # reaches the same end does not announce it twice.
        checkpoint = snapshot.config["configurable"]["checkpoint_id"]
        if status == "waiting":
            end = progress(ticket_id, "run.interrupted", snapshot.interrupts[0].value, checkpoint)
        else:
            reply = (snapshot.values.get("reply") or {}).get("text")
            outcome = {"outcome": snapshot.values.get("outcome"), "reply": reply}
            end = progress(ticket_id, "run.resolved", outcome, checkpoint)
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                FINISH,
                {
                    "status": status,
                    "node": decisions[-1]["node"] if decisions else None,
                    "approval_id": approval_id,
                    "ticket_id": ticket_id,
                },
            )
            await add_to_outbox(conn, [*(pending or []), end])
        return status

    async def _failed(self, ticket_id: int, exc: Exception) -> str:
        log.warning("ticket %s: run failed: %r", ticket_id, exc)
        # One transaction: a stream that sees the run failed has its run.failed event too.
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    FAIL,
                    {
                        "error": repr(exc)[:2000],
                        "max": MAX_ATTEMPTS,
                        "backoff": 2.0,
                        "ticket_id": ticket_id,
                    },
                )
            ).fetchone()
            status = row["status"] if row else "failed"
            failed = progress(ticket_id, "run.failed", {"error": repr(exc)[:2000], "next": status})
            await add_to_outbox(conn, [failed])
        return "failed" if status == "failed" else "retry"


def progress(
    ticket_id: int, type: str, data: dict[str, Any], key: str | None = None
) -> tuple[Topic, Event]:
    """A progress event of the ticket's run on ``agent.actions``; ``key`` makes its id stable."""
    event = Event(
        type=type,
        source=SOURCE,
        subject=subject(ticket_id),
        data={"ticket_id": ticket_id, **data},
        trace_id=RUN_TRACE.get(),
    )
    if key is not None:
        event.id = uuid.uuid5(uuid.NAMESPACE_URL, f"supportmesh:{subject(ticket_id)}:{key}")
    return Topic.AGENT_ACTIONS, event


async def stream_events(
    pool: Pool, ticket_id: int, after: int = 0, poll: float = 0.25
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """The ticket's progress events after ``after``, then new ones as they come, until the run
    stops (resolved, waiting for a human, or failed) with nothing after it."""
    while True:
        batch = await events_after(pool, ticket_id, after)
        for seq, event in batch:
            after = seq
            yield seq, event
        if batch and batch[-1][1]["type"] in TERMINAL and len(batch) < 500:
            return
        if not batch:
            if await ended_after(pool, ticket_id, after):  # it ended with what was read
                return
            await asyncio.sleep(poll)
