"""The ticketing MCP server: tickets, comments, status changes and SLA clocks.

Tools are thin: they check arguments (pydantic does it from the signature), call ``store``, and
let typed errors through. ``build_server(settings)`` makes the server; ``supportmesh serve
ticketing`` runs it over stdio or HTTP. A Celery worker and beat in its process scan for
breached SLA clocks (``tasks.py``).
"""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from fastmcp.prompts import Message
from mcp.types import ToolAnnotations
from pydantic import Field, StrictBool, StrictInt

from schemas.common import CustomerId, IdempotencyKey, Timestamp
from schemas.ticketing import (
    Assignee,
    Body,
    Channel,
    Comment,
    EmailAddress,
    NewTicket,
    Priority,
    Subject,
    Tag,
    Tags,
    TicketChange,
    TicketDetail,
    TicketId,
    TicketPage,
    TicketQuery,
    TicketStatus,
)
from servers.runtime.auth import Caller, current_caller
from servers.runtime.database import Pool
from servers.runtime.events import schema_with_outbox
from servers.runtime.limits import id_number
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings
from servers.runtime.tasks import beat_in_thread, worker_in_thread
from servers.ticketing import store
from servers.ticketing.tasks import schedule

NAME = "ticketing"
MIGRATIONS = Path(__file__).parent / "migrations"
INSTRUCTIONS = """\
Customer-support tickets. Find tickets with search_tickets, read one with get_ticket, open one
with create_ticket, move it through new -> open -> pending -> solved -> closed with
update_ticket / close_ticket, and talk to the customer (public reply) or the team (internal
note) with add_comment. Every ticket carries SLA clocks (first response, resolution) computed
when read. Writes accept an idempotency_key: reuse it when retrying the same write."""

READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
CREATE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False
)
CHANGE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False
)


@dataclass
class Ticketing:
    """What the tools use, opened once when the server starts."""

    pool: Pool
    settings: Settings

    def caller(self, ctx: Context) -> Caller:
        return current_caller(ctx, self.settings)


def _desk(ctx: Context) -> Ticketing:
    desk: Ticketing = ctx.lifespan_context  # type: ignore[assignment]
    return desk


# --- tools ------------------------------------------------------------------------------------


async def create_ticket(
    subject: Subject,
    description: Body,
    ctx: Context,
    priority: Priority = Priority.NORMAL,
    channel: Channel = Channel.API,
    customer_id: CustomerId | None = None,
    requester_email: EmailAddress | None = None,
    assignee: Assignee | None = None,
    tags: Tags | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> TicketDetail:
    """Open a new support ticket for a customer's problem; it starts in status 'new'.

    Give a one-line `subject` and the customer's words in `description`. Set `priority`
    (low, normal, high, urgent) from impact: urgent means the customer cannot use the
    service at all. `customer_id` is the CRM id (e.g. 'mia_garcia_4516') when known.
    The SLA clocks start now. Returns the ticket with its number (`id`) and SLA due times.
    Before creating, search_tickets for an open ticket about the same problem to avoid
    duplicates. Pass an `idempotency_key` so a retry does not open a second ticket.
    """
    desk = _desk(ctx)
    new = NewTicket(
        subject=subject,
        description=description,
        priority=priority,
        channel=channel,
        customer_id=customer_id,
        requester_email=requester_email,
        assignee=assignee,
        tags=tags or [],
    )
    return await store.create_ticket(
        desk.pool, desk.settings.sla_policy, desk.caller(ctx), new, idempotency_key
    )


async def get_ticket(ticket_id: TicketId, ctx: Context) -> TicketDetail:
    """Read one ticket: its fields, SLA clocks, every comment and its status history.

    `ticket_id` is the ticket number, e.g. 42. SLA state is 'running', 'met' or 'breached'.
    """
    desk = _desk(ctx)
    return await store.get_ticket(desk.pool, desk.settings.sla_policy, ticket_id)


async def search_tickets(
    ctx: Context,
    text: Annotated[
        str | None,
        Field(
            max_length=500,
            description=(
                'Words to look for in subject and description (web-search syntax: "exact phrase", '
                "-exclude, or). Results are then ordered by relevance."
            ),
        ),
    ] = None,
    status: Annotated[list[TicketStatus] | None, Field(description="Any of these.")] = None,
    priority: Annotated[list[Priority] | None, Field(description="Any of these.")] = None,
    customer_id: CustomerId | None = None,
    tag: Annotated[Tag | None, Field(description="Tickets carrying this tag.")] = None,
    assignee: Assignee | None = None,
    created_after: Annotated[Timestamp | None, Field(description="ISO 8601, inclusive.")] = None,
    created_before: Annotated[Timestamp | None, Field(description="ISO 8601, exclusive.")] = None,
    limit: Annotated[StrictInt, Field(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None,
        Field(max_length=500, description="`next_cursor` of the previous page, same filters."),
    ] = None,
) -> TicketPage:
    """Find tickets by words and filters, newest first (best match first when `text` is given).

    All filters combine with AND. Returns one page and a `next_cursor` for the next; pass it
    back with the same filters. Use this before create_ticket to find an existing ticket.
    """
    desk = _desk(ctx)
    query = TicketQuery(
        text=text,
        status=status or [],
        priority=priority or [],
        customer_id=customer_id,
        tag=tag,
        assignee=assignee,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
    )
    return await store.search_tickets(desk.pool, desk.settings.sla_policy, query, cursor)


async def update_ticket(
    ticket_id: TicketId,
    ctx: Context,
    status: Annotated[
        TicketStatus | None,
        Field(
            description=(
                "New status. Legal moves: new -> open|pending|solved; open <-> pending; "
                "open|pending -> solved; solved -> open (reopen, within the reopen window). "
                "To close, use close_ticket."
            )
        ),
    ] = None,
    priority: Priority | None = None,
    assignee: Assignee | None = None,
    unassign: Annotated[StrictBool, Field(description="True to clear the assignee.")] = False,
    add_tags: Tags | None = None,
    remove_tags: Tags | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> TicketDetail:
    """Change a ticket's status, priority, assignee or tags; give only what changes.

    Status moves follow the ticket lifecycle; an illegal move is refused with a `conflict`
    error and nothing changes. A closed ticket cannot be changed. Changing priority moves
    the SLA due times. Returns the updated ticket.
    """
    desk = _desk(ctx)
    change = TicketChange(
        status=status,
        priority=priority,
        assignee=assignee,
        unassign=unassign,
        add_tags=add_tags or [],
        remove_tags=remove_tags or [],
    )
    return await store.update_ticket(
        desk.pool, desk.settings.sla_policy, desk.caller(ctx), ticket_id, change, idempotency_key
    )


async def add_comment(
    ticket_id: TicketId,
    body: Body,
    ctx: Context,
    public: Annotated[
        StrictBool,
        Field(
            description=(
                "True: a reply the customer receives. False: an internal note only agents see."
            )
        ),
    ] = False,
    idempotency_key: IdempotencyKey | None = None,
) -> Comment:
    """Add a public reply to the customer or an internal note to a ticket.

    A public reply is sent to the customer, so write it for them and check the facts
    first; the first public reply meets the first-response SLA. Internal notes are for
    the team (findings, next steps). Closed tickets take no comments.
    """
    desk = _desk(ctx)
    return await store.add_comment(
        desk.pool, desk.caller(ctx), ticket_id, body, public, idempotency_key
    )


async def close_ticket(
    ticket_id: TicketId, ctx: Context, idempotency_key: IdempotencyKey | None = None
) -> TicketDetail:
    """Close a ticket for good once the customer's problem is resolved.

    An unsolved ticket is marked solved and then closed. A closed ticket is read-only and
    cannot be reopened (a new problem gets a new ticket), so confirm with the customer that
    nothing is left open before closing.
    """
    desk = _desk(ctx)
    return await store.close_ticket(
        desk.pool, desk.settings.sla_policy, desk.caller(ctx), ticket_id, idempotency_key
    )


# --- resources, prompts, completions ----------------------------------------------------------


async def ticket_resource(ticket_id: str, ctx: Context) -> dict[str, Any]:
    """A ticket with its comments, history and SLA, as JSON."""
    number = id_number(ticket_id, "ticket_id", "a ticket number")
    desk = _desk(ctx)
    detail = await store.get_ticket(desk.pool, desk.settings.sla_policy, number)
    return detail.model_dump(mode="json")


async def summarize_ticket(ticket_id: str, ctx: Context) -> list[Message]:
    """Summarize a ticket for a hand-over: problem, what was tried, state, next step.

    Args:
        ticket_id: The ticket number, e.g. 42.
    """
    resource = await ticket_resource(ticket_id, ctx)
    return [
        Message(
            "Summarize this support ticket for the agent taking it over, in at most five "
            "bullet points: the customer's problem, what has been done, the current status "
            "and SLA state, and the next step. Quote ids exactly.\n\n"
            + json.dumps(resource, indent=1)
        )
    ]


COMPLETE_IDS = """
    SELECT id::text AS id FROM tickets WHERE id::text LIKE %s ORDER BY tickets.id DESC LIMIT 100
"""


async def complete_ticket_id(
    desk: Ticketing, ref: str, argument: str, prefix: str, _others: dict[str, str]
) -> list[str]:
    """Ticket numbers starting with what was typed, newest first."""
    if argument != "ticket_id" or ref not in ("summarize-ticket", "tickets://{ticket_id}"):
        return []
    if prefix and not prefix.isdigit():
        return []
    async with desk.pool.connection() as conn:
        rows = await (await conn.execute(COMPLETE_IDS, [prefix + "%"])).fetchall()
    return [r["id"] for r in rows]


def build_server(settings: Settings) -> FastMCP[Any]:
    """The ticketing server, on the backends named in ``settings`` (all URLs set)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[Ticketing]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(schema_with_outbox(settings, NAME, MIGRATIONS))
            stack.enter_context(worker_in_thread(settings, NAME))
            stack.enter_context(beat_in_thread(settings, NAME, schedule(settings)))
            yield Ticketing(pool=pool, settings=settings)

    server = new_server(NAME, INSTRUCTIONS, lifespan, settings, complete_ticket_id)
    server.tool(annotations=CREATE, title="Create ticket")(create_ticket)
    server.tool(annotations=READ, title="Get ticket")(get_ticket)
    server.tool(annotations=READ, title="Search tickets")(search_tickets)
    server.tool(annotations=CHANGE, title="Update ticket")(update_ticket)
    server.tool(annotations=CREATE, title="Add comment")(add_comment)
    server.tool(annotations=CHANGE, title="Close ticket")(close_ticket)
    server.resource("tickets://{ticket_id}", name="ticket", mime_type="application/json")(
        ticket_resource
    )
    server.prompt(name="summarize-ticket")(summarize_ticket)
    return server
