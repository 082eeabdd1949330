"""Running a ticket through the graph: the PostgreSQL checkpointer, and one call to start or
resume a ticket's run.

Checkpoints live in the project's PostgreSQL, in a schema of their own (``orchestrator``), one
thread per ticket (thread id = ticket id). Runs use ``durability="sync"``: each step's
checkpoint is written before the next step starts. It is the only mode that survived a hard
crash on these machines (the others either restarted the whole graph or had saved nothing), and
a ticket's steps are few and slow (MCP calls) next to a checkpoint write.
"""

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from orchestrator.graph import RunContext
from orchestrator.mesh import RUN_TRACE
from orchestrator.state import TicketState
from orchestrator.tracing import run_span

SCHEMA = "orchestrator"


@contextlib.asynccontextmanager
async def postgres_checkpointer(url: str, max_size: int = 4) -> AsyncIterator[AsyncPostgresSaver]:
    """LangGraph's PostgreSQL saver on ``url``, its tables in the ``orchestrator`` schema, on a
    pool of up to ``max_size`` connections."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    async with AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={
            # What the saver's setup() needs on a fresh database, and our schema.
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": 0,
            "options": f"-c search_path={SCHEMA}",
        },
    ) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver


class Busy(Exception):
    """Another runner holds the ticket's thread."""


def lease_key(ticket_id: int) -> int:
    """The advisory-lock key of a ticket's thread: 63 bits of a hash, apart from any other
    user of advisory locks on the database."""
    digest = hashlib.blake2b(f"supportmesh:orchestrator:{ticket_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


@contextlib.asynccontextmanager
async def lease(url: str, ticket_id: int) -> AsyncIterator[None]:
    """Hold the ticket's thread while the block runs: one runner at a time, whichever process
    or replica it is in (``Busy`` if another holds it).

    A PostgreSQL session advisory lock, on a connection of its own held for the run. It ends
    with that connection, so a runner that crashes (its process gone, its socket closed) lets
    the next runner take the thread over, with no lease row to expire or clean up.
    """
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", [lease_key(ticket_id)])
        ).fetchone()
        if row is None or not row[0]:
            raise Busy(f"ticket {ticket_id} is being handled by another runner")
        yield


def describe(node: str, written: Any) -> str:
    """One line on what a node decided."""
    if node == "__interrupt__":
        request = written[0].value
        action = request["action_requests"][0]
        return f"waiting for approval {request['approval_id']}: {action['description']}"
    if not isinstance(written, dict):
        return ""
    if node == "triage":
        return f"intent {written['triage']['intent']}, customer {written.get('customer_id')}"
    if node == "solution" and written.get("plan"):
        plan = written["plan"]
        tools = ", ".join(a["tool"] for a in plan["actions"])
        declined = ", ".join(f"{d['intent']} ({d['why']})" for d in plan.get("declined", []))
        said = f"actions {tools}" if tools else f"no action: {plan['blocked'] or 'see below'}"
        return said + (f"; not done: {declined}" if declined else "")
    if node == "act":
        outcome = written["outcome"]
        return f"{len(outcome['done'])} written: {outcome['status']}"
    if node == "quality":
        return "; ".join(written["quality"]["problems"]) or "reply ok"
    if node == "resolve":
        return str(written["decisions"][-1]["detail"])
    if node == "research":
        return ", ".join(
            f"{k}: {'error' if v.get('error') else 'ok'}"
            for k, v in written.get("evidence", {}).items()
        )
    return ""


def thread(ticket_id: int) -> RunnableConfig:
    return {"configurable": {"thread_id": str(ticket_id)}}


async def start_input(
    graph: CompiledStateGraph[TicketState, RunContext, TicketState, TicketState],
    ticket_id: int,
    resume: dict[str, Any] | None = None,
) -> tuple[str, Any] | None:
    """How to run the ticket's thread now, from its checkpoints: ``("start", input)`` the first
    time, ``("resume", Command)`` when it waits for a decision and ``resume`` is given,
    ``("continue", None)`` when its last runner stopped mid-run; None when there is nothing to
    do (resolved, or waiting with no ``resume``)."""
    snapshot = await graph.aget_state(thread(ticket_id))
    if snapshot.created_at is None:
        return "start", {"ticket_id": ticket_id}
    if snapshot.interrupts:
        return ("resume", Command(resume=resume)) if resume is not None else None
    if snapshot.next:
        return "continue", None
    return None


async def steps(
    graph: CompiledStateGraph[TicketState, RunContext, TicketState, TicketState],
    ticket_id: int,
    context: RunContext,
    *,
    resume: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[str, Any]]:
    """Start, continue or resume the ticket's run (``start_input``), yielding (node, what it
    wrote) as each node finishes; a pause for a human's decision comes as ("__interrupt__",
    its requests). Nothing, if the run has nothing to do."""
    start = await start_input(graph, ticket_id, resume)
    if start is None:
        return
    async for update in graph.astream(
        start[1], thread(ticket_id), context=context, durability="sync", stream_mode="updates"
    ):
        for node, written in update.items():
            yield node, written


async def handle(
    graph: CompiledStateGraph[TicketState, RunContext, TicketState, TicketState],
    ticket_id: int,
    context: RunContext,
    *,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start the ticket's run, or resume it after a human decided (``resume``: the approval
    id, which the run reads the decision of). Returns the state it stopped in; a run waiting
    for a decision has ``__interrupt__``."""
    start = await start_input(graph, ticket_id, resume)
    if start is not None:
        with run_span(ticket_id, RUN_TRACE.get() or context.mesh.trace_id, start[0]):
            result: dict[str, Any] = await graph.ainvoke(
                start[1], thread(ticket_id), context=context, durability="sync"
            )
        return result
    snapshot = await graph.aget_state(thread(ticket_id))
    waiting = {"__interrupt__": list(snapshot.interrupts)} if snapshot.interrupts else {}
    return {**snapshot.values, **waiting}
