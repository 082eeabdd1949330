"""The approvals MCP server: a human approves or rejects a risky action.

An agent (or the orchestrator) asks with ``request_approval``; an approver decides with
``decide_approval`` — never their own request, and only once. Requests not decided in time
expire: Celery beat sends ``approvals.expire_due`` every ``approval_sweep_seconds`` and a
worker in this process runs it. Every change is an event on ``human.approvals``.
"""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from mcp.types import ClientCapabilities, ElicitationCapability, ToolAnnotations
from pydantic import Field, StrictInt, StringConstraints

from schemas.approvals import (
    ActionTool,
    Amount,
    Approval,
    ApprovalId,
    ApprovalPage,
    ApprovalSubject,
    Decision,
    DecisionComment,
    Reason,
)
from schemas.common import MAX_JSON_BYTES, MAX_JSON_DEPTH, IdempotencyKey, JsonObject
from servers.approvals import store
from servers.approvals.tasks import schedule
from servers.runtime.auth import Caller, current_caller
from servers.runtime.database import Pool, values_starting_with
from servers.runtime.errors import Conflict
from servers.runtime.events import schema_with_outbox
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings
from servers.runtime.tasks import beat_in_thread, worker_in_thread

NAME = "approvals"
MIGRATIONS = Path(__file__).parent / "migrations"
INSTRUCTIONS = """\
Human approval of risky actions (refunds, exchanges, goodwill credits). Before such an action,
call request_approval with what you intend to do and why, then wait: poll get_approval until
its status is 'approved' (go ahead, exactly as requested), 'rejected' or 'expired' (do not).
Approvers see list_pending_approvals and decide with decide_approval; nobody decides their own
request."""

READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
REQUEST = ToolAnnotations(
    readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False
)
DECIDE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False
)
Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{3}$"),
    Field(description="ISO 4217 code of the amount, e.g. USD."),
]


@dataclass
class Approvals:
    pool: Pool
    settings: Settings

    def caller(self, ctx: Context) -> Caller:
        return current_caller(ctx, self.settings)


def _approvals(ctx: Context) -> Approvals:
    approvals: Approvals = ctx.lifespan_context  # type: ignore[assignment]
    return approvals


async def request_approval(
    subject: ApprovalSubject,
    action_tool: ActionTool,
    reason: Reason,
    ctx: Context,
    action_arguments: Annotated[
        JsonObject,
        Field(
            description="The exact arguments the action will be called with, once approved "
            f"(a JSON object, at most {MAX_JSON_DEPTH} levels deep and {MAX_JSON_BYTES} bytes)."
        ),
    ] = {},  # noqa: B006  (pydantic copies defaults)
    amount: Amount | None = None,
    currency: Currency = "USD",
    expires_in_seconds: Annotated[
        StrictInt,
        Field(ge=1, le=30 * 24 * 3600, description="Undecided after this long: expired."),
    ] = 24 * 3600,
    idempotency_key: IdempotencyKey | None = None,
) -> Approval:
    """Ask a human approver to allow an action; returns the pending approval at once.

    Describe the action exactly (the tool and its arguments) with the money at stake and the
    reason; the approver decides on what is written here. You are recorded as the requester
    and cannot decide it yourself. Poll get_approval with the returned `id`.
    """
    approvals = _approvals(ctx)
    return await store.request_approval(
        approvals.pool,
        approvals.caller(ctx),
        subject,
        action_tool,
        action_arguments,
        amount,
        currency,
        reason,
        timedelta(seconds=expires_in_seconds),
        idempotency_key,
        approvals.settings.notify_approvers,
    )


async def get_approval(approval_id: ApprovalId, ctx: Context) -> Approval:
    """An approval and, once decided, who decided it, when and with what comment."""
    return await store.get_approval(_approvals(ctx).pool, approval_id)


async def list_pending_approvals(
    ctx: Context,
    subject: ApprovalSubject | None = None,
    requested_by: Annotated[
        str | None, Field(max_length=200, description="Only requests by this actor.")
    ] = None,
    limit: Annotated[StrictInt, Field(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Field(max_length=500)] = None,
) -> ApprovalPage:
    """Approvals waiting for a decision, oldest first; pass `next_cursor` back for more."""
    return await store.list_pending(_approvals(ctx).pool, subject, requested_by, limit, cursor)


async def decide_approval(
    approval_id: ApprovalId,
    decision: Annotated[Decision, Field(description="'approve' or 'reject'.")],
    ctx: Context,
    comment: DecisionComment | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> Approval:
    """Approve or reject a pending approval (approver role; never your own request).

    A decision is final: a second one is refused. Where your client can show forms, you are
    asked to confirm the action and amount first.
    """
    approvals = _approvals(ctx)
    caller = approvals.caller(ctx)
    approval = await store.get_approval(approvals.pool, approval_id)
    store.check_decidable(approval, caller)
    if _can_elicit(ctx):
        amount = f" for {approval.amount} {approval.currency}" if approval.amount else ""
        answer = await ctx.elicit(
            f"{decision.value.capitalize()} {approval.action_tool}{amount} on "
            f"{approval.subject}?\nArguments: {json.dumps(approval.action_arguments)}\n"
            f"Reason: {approval.reason}\nRequested by {approval.requested_by}.",
            response_type=None,  # nothing to fill in: accept or decline
        )
        if answer.action != "accept":
            raise Conflict("decision", "not confirmed by the approver; nothing was decided")
    return await store.decide_approval(
        approvals.pool, caller, approval_id, decision, comment, idempotency_key
    )


def _can_elicit(ctx: Context) -> bool:
    try:
        session = ctx.session
    except RuntimeError:
        return False
    return session.check_client_capability(ClientCapabilities(elicitation=ElicitationCapability()))


async def pending_resource(ctx: Context) -> str:
    """The approvals waiting for a decision (up to 200), oldest first, as JSON."""
    page = await store.list_pending(_approvals(ctx).pool, None, None, 200, None)
    return page.model_dump_json(indent=1)


async def approval_resource(approval_id: str, ctx: Context) -> str:
    """One approval, as JSON."""
    approval = await store.get_approval(_approvals(ctx).pool, approval_id)
    return approval.model_dump_json(indent=1)


async def complete_approval_id(
    approvals: Approvals, ref: str, argument: str, prefix: str, _others: dict[str, str]
) -> list[str]:
    """Pending approval ids starting with what was typed, oldest first."""
    if argument != "approval_id" or ref != "approvals://{approval_id}":
        return []
    return await values_starting_with(
        approvals.pool,
        "SELECT id FROM approvals WHERE status = 'pending' AND id LIKE %s "
        "ORDER BY requested_at LIMIT 101",
        prefix,
    )


def build_server(settings: Settings) -> FastMCP[Any]:
    """The approvals server, on the backends named in ``settings`` (all URLs set)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[Approvals]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(schema_with_outbox(settings, NAME, MIGRATIONS))
            stack.enter_context(worker_in_thread(settings, NAME))
            stack.enter_context(beat_in_thread(settings, NAME, schedule(settings)))
            yield Approvals(pool=pool, settings=settings)

    server = new_server(
        NAME,
        INSTRUCTIONS,
        lifespan,
        settings,
        complete_approval_id,
        scopes={"decide_approval": "approver"},
    )
    server.tool(annotations=REQUEST)(request_approval)
    server.tool(annotations=READ)(get_approval)
    server.tool(annotations=READ)(list_pending_approvals)
    server.tool(annotations=DECIDE)(decide_approval)
    server.resource("approvals://pending", name="pending-approvals", mime_type="application/json")(
        pending_resource
    )
    server.resource("approvals://{approval_id}", name="approval", mime_type="application/json")(
        approval_resource
    )
    return server
