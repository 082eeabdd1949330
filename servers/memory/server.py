"""The memory MCP server: what the mesh remembers about a customer.

Session memory (Redis): the turns of a conversation, bounded and expiring. Long-term memory
(PostgreSQL rows, Qdrant vectors): preferences, facts and summaries of past conversations,
recalled by meaning and only ever for the customer asked about. ``forget_customer`` erases a
customer from all three stores. Idle sessions become summaries through a Celery task that runs
in this process (Qdrant's local store admits one process).
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations
from pydantic import Field, StrictInt, StringConstraints
from redis.asyncio import Redis

from schemas.common import CustomerId, IdempotencyKey
from schemas.memory import (
    ErasureReceipt,
    MemoryKind,
    MemoryPage,
    MemoryText,
    Recalled,
    RecallQuery,
    Remembered,
    Session,
    SessionAppended,
    SessionId,
    Speaker,
    TurnText,
)
from servers.memory import store
from servers.memory.sessions import Sessions
from servers.memory.tasks import schedule, sessions_of
from servers.runtime.auth import Caller, current_caller
from servers.runtime.database import values_starting_with
from servers.runtime.embeddings import embedding_model
from servers.runtime.events import schema_with_outbox
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings
from servers.runtime.tasks import beat_in_thread, worker_in_thread
from servers.runtime.vectors import open_vectors
from servers.runtime.writes import arguments_hash

NAME = "memory"
MIGRATIONS = Path(__file__).parent / "migrations"
INSTRUCTIONS = """\
Memory about customers. Keep the running conversation with append_session and read it back with
get_session. Store lasting knowledge (a preference, a fact, a summary) with remember, and
recall it by meaning with recall before answering a returning customer. Memory is per
customer: recall never returns another customer's memory. forget_customer (admin) erases a
customer everywhere, for right-to-erasure requests."""

READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
ADD = ToolAnnotations(
    readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False
)
ERASE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False
)
Source = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="Where it was learnt, e.g. 'ticket/42' or 'chat'."),
]


@dataclass
class MemoryServer:
    long_term: store.LongTermMemory
    sessions: Sessions
    settings: Settings

    def caller(self, ctx: Context) -> Caller:
        return current_caller(ctx, self.settings)


def _memory(ctx: Context) -> MemoryServer:
    memory: MemoryServer = ctx.lifespan_context  # type: ignore[assignment]
    return memory


async def append_session(
    customer_id: CustomerId,
    session_id: SessionId,
    speaker: Annotated[Speaker, Field(description="Who said it: customer, agent or system.")],
    text: TurnText,
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> SessionAppended:
    """Add one turn to a conversation's session memory.

    Sessions keep their latest turns only (older ones drop off) and expire some time after
    the last turn; an ended session is summarised into long-term memory automatically.
    """
    memory = _memory(ctx)
    digest = arguments_hash(
        {"customer_id": customer_id, "session_id": session_id, "speaker": speaker, "text": text}
    )
    return await memory.sessions.append(
        customer_id, session_id, speaker, text, idempotency_key, digest
    )


async def get_session(
    customer_id: CustomerId,
    session_id: SessionId,
    ctx: Context,
    last: Annotated[StrictInt, Field(ge=1, le=500, description="How many recent turns.")] = 20,
) -> Session:
    """The last turns of a conversation, oldest first (empty if none or expired)."""
    return await _memory(ctx).sessions.read(customer_id, session_id, last)


async def remember(
    customer_id: CustomerId,
    text: MemoryText,
    kind: Annotated[
        MemoryKind,
        Field(description="preference (likes, wants), fact (about them), interaction_summary."),
    ],
    ctx: Context,
    source: Source = "agent",
    idempotency_key: IdempotencyKey | None = None,
) -> Remembered:
    """Keep something about a customer for future conversations.

    Write one self-contained statement ("Prefers email over phone", "Has two dogs"). Do not
    store card numbers or passwords. Returns the memory's id.
    """
    memory = _memory(ctx)
    return await store.remember(
        memory.long_term, memory.caller(ctx), customer_id, text, kind, source, idempotency_key
    )


async def recall(
    customer_id: CustomerId,
    query: RecallQuery,
    ctx: Context,
    k: Annotated[StrictInt, Field(ge=1, le=50, description="How many memories.")] = 5,
    kind: MemoryKind | None = None,
) -> Recalled:
    """The customer's memories closest in meaning to `query`, best first.

    Only this customer's memories are searched, whatever the query says.
    """
    return await store.recall(_memory(ctx).long_term, customer_id, query, k, kind)


async def list_memories(
    customer_id: CustomerId,
    ctx: Context,
    kind: MemoryKind | None = None,
    limit: Annotated[StrictInt, Field(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Field(max_length=500)] = None,
) -> MemoryPage:
    """All of a customer's long-term memories, oldest first; pass `next_cursor` back for more."""
    return await store.list_memories(_memory(ctx).long_term.pool, customer_id, kind, limit, cursor)


async def forget_customer(
    customer_id: CustomerId, ctx: Context, idempotency_key: IdempotencyKey | None = None
) -> ErasureReceipt:
    """Erase everything remembered about a customer — sessions, memories and their vectors —
    and return a receipt of what was removed from each store (right to erasure; admin role).

    Confirm the request is genuine first: it cannot be undone.
    """
    memory = _memory(ctx)
    return await store.forget_customer(
        memory.long_term, memory.sessions, memory.caller(ctx), customer_id, idempotency_key
    )


async def customer_resource(customer_id: str, ctx: Context) -> str:
    """A customer's long-term memories (the first 200), as JSON."""
    page = await store.list_memories(_memory(ctx).long_term.pool, customer_id, None, 200, None)
    return page.model_dump_json(indent=1)


async def complete_customer_id(
    memory: MemoryServer, ref: str, argument: str, prefix: str, _others: dict[str, str]
) -> list[str]:
    """Customers with memories whose id starts with what was typed."""
    if argument != "customer_id" or ref != "memory://customers/{customer_id}":
        return []
    return await values_starting_with(
        memory.long_term.pool,
        "SELECT DISTINCT customer_id FROM memories WHERE customer_id LIKE %s "
        "ORDER BY customer_id LIMIT 101",
        prefix,
    )


def build_server(settings: Settings) -> FastMCP[Any]:
    """The memory server, on the backends named in ``settings`` (all URLs set)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[MemoryServer]:
        assert settings.redis_url
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(schema_with_outbox(settings, NAME, MIGRATIONS))
            redis = Redis.from_url(settings.redis_url, decode_responses=True)
            stack.push_async_callback(redis.aclose)
            long_term = store.LongTermMemory(
                pool, open_vectors(settings), embedding_model(settings.embedding_model)
            )
            long_term.ensure_collection()
            stack.enter_context(worker_in_thread(settings, NAME))
            stack.enter_context(beat_in_thread(settings, NAME, schedule(settings)))
            yield MemoryServer(long_term, sessions_of(settings, redis), settings)

    server = new_server(
        NAME,
        INSTRUCTIONS,
        lifespan,
        settings,
        complete_customer_id,
        scopes={"forget_customer": "admin"},
    )
    server.tool(annotations=ADD)(append_session)
    server.tool(annotations=READ)(get_session)
    server.tool(annotations=ADD)(remember)
    server.tool(annotations=READ)(recall)
    server.tool(annotations=READ)(list_memories)
    server.tool(annotations=ERASE)(forget_customer)
    server.resource(
        "memory://customers/{customer_id}", name="customer-memories", mime_type="application/json"
    )(customer_resource)
    return server
