"""The analytics MCP server: the questions a support lead asks every morning, from events alone.

It reads all five topics as consumer group ``analytics_group`` (default ``analytics``; replicas
share the partitions) and applies each event once to aggregates in its own schema: the event's
id is recorded in the same transaction as the change, and offsets are committed after it, so a
redelivered or replayed event changes nothing. ``supportmesh analytics rebuild`` replays the
servers' outboxes into empty aggregates; the result equals the incrementally built one.

The same process hands ``notifications.outbound`` to delivery (``servers.notifications``): a
consumer group of its own turns each message into a Celery task, which a worker in this process
runs (or ``supportmesh worker --only notifications`` elsewhere).
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from fastmcp.prompts import Message
from mcp.types import ToolAnnotations
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field, StrictInt

from schemas.analytics import (
    ActionField,
    ActionKind,
    AgentActions,
    ApprovalField,
    ApprovalStats,
    Bucket,
    BucketArg,
    ResolutionTimes,
    Since,
    SlaBreaches,
    TicketField,
    TicketVolume,
    Until,
)
from schemas.events import Topic
from schemas.ticketing import Priority
from servers.analytics import store
from servers.notifications.handover import notifications_running
from servers.runtime.database import Pool
from servers.runtime.errors import InvalidArgument
from servers.runtime.events import EventBatch, consume_events, schema_with_outbox
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings
from servers.runtime.tasks import worker_in_thread

NAME = "analytics"
MIGRATIONS = Path(__file__).parent / "migrations"
INSTRUCTIONS = """\
Support analytics built from the mesh's events: ticket volume, first-response and resolution
times, SLA breaches, agent actions and approvals, over a time window cut into hour, day or week
buckets (UTC), optionally split by fields. Read analytics://dashboard for the last 24 hours at a
glance. Numbers lag the events by about a second."""

READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
APPROVALS_PENDING = Gauge(
    "supportmesh_approvals_pending", "Approvals requested and not yet decided or expired"
)
EVENTS = Counter(
    "supportmesh_analytics_events_total",
    "Events the analytics server read, by topic and result (applied, duplicate, skipped)",
    ["topic", "result"],
)


@dataclass
class Analytics:
    pool: Pool
    settings: Settings
    consuming: asyncio.Event  # the consumer holds its partitions


def _pool(ctx: Context) -> Pool:
    analytics: Analytics = ctx.lifespan_context  # type: ignore[assignment]
    return analytics.pool


def _group_by(field: type[Any], what: str) -> Any:
    names = ", ".join(repr(f.value) for f in field)
    return Field(max_length=3, description=f"Split the counts by up to three of {names}{what}.")


TicketGroups = Annotated[
    list[TicketField],
    _group_by(TicketField, " (as the ticket is now; category from its 'category:<name>' tag)"),
]
ActionGroups = Annotated[list[ActionField], _group_by(ActionField, " (actor only for writes)")]
ApprovalGroups = Annotated[list[ApprovalField], _group_by(ApprovalField, "")]


async def ticket_volume(
    ctx: Context,
    since: Since = None,
    until: Until = None,
    bucket: BucketArg = Bucket.DAY,
    group_by: TicketGroups = [],  # noqa: B006  (pydantic copies defaults)
) -> TicketVolume:
    """How many tickets were created, solved and reopened, per bucket.

    Each is counted when it happened: a ticket created Monday and solved Tuesday adds to
    Monday's `created` and Tuesday's `solved`. Use group_by ['channel'] to see where tickets
    come from, ['category'] for what they are about.
    """
    return await store.ticket_volume(_pool(ctx), since, until, bucket, group_by)


async def resolution_times(
    ctx: Context,
    since: Since = None,
    until: Until = None,
    bucket: BucketArg = Bucket.DAY,
    group_by: TicketGroups = [],  # noqa: B006  (pydantic copies defaults)
) -> ResolutionTimes:
    """How long customers waited: first response (ticket created → first public reply) and
    resolution (created → solved), p50 / p90 / max in seconds, with how many tickets each
    covers.

    First response counts tickets first answered in the window; resolution those solved in it.
    """
    return await store.resolution_times(_pool(ctx), since, until, bucket, group_by)


async def sla_breaches(
    ctx: Context,
    since: Since = None,
    until: Until = None,
    bucket: BucketArg = Bucket.DAY,
    priority: Annotated[Priority | None, Field(description="Only this priority.")] = None,
    limit: Annotated[
        StrictInt, Field(ge=0, le=500, description="How many breaches to list, newest first.")
    ] = 50,
) -> SlaBreaches:
    """SLA clocks (first response, resolution) breached in the window: counts by priority and
    clock per bucket, and the breaches themselves (ticket, due time, assignee), newest first.

    A breach is recorded once per ticket and clock, when the ticketing server's scan finds it.
    """
    return await store.sla_breaches(
        _pool(ctx), since, until, bucket, priority.value if priority else None, limit
    )


async def agent_actions(
    ctx: Context,
    since: Since = None,
    until: Until = None,
    bucket: BucketArg = Bucket.DAY,
    kind: Annotated[
        ActionKind,
        Field(
            description="'writes': every change a server made (ticket updates, comments, "
            "refunds, approvals...), by the tool and the actor that made it; 'calls': every "
            "MCP tool call, reads included, by tool, outcome ('ok' or the error code) and "
            "server ('source'), from the servers' minute samples."
        ),
    ] = ActionKind.WRITES,
    group_by: ActionGroups = [ActionField.TOOL],  # noqa: B006
) -> AgentActions:
    """What agents and people did through the mesh, counted per bucket: writes by tool and
    actor, or calls by tool, outcome and server (errors show as outcomes other than 'ok')."""
    return await store.agent_actions(_pool(ctx), since, until, bucket, kind, group_by)


async def approval_stats(
    ctx: Context,
    since: Since = None,
    until: Until = None,
    bucket: BucketArg = Bucket.DAY,
    group_by: ApprovalGroups = [],  # noqa: B006
) -> ApprovalStats:
    """Approvals requested, approved, rejected and expired per bucket, and how long a decision
    took (requested → decided, p50 / p90 seconds).

    Requests count when made; decisions and expiries when they happened.
    """
    return await store.approval_stats(_pool(ctx), since, until, bucket, group_by)


async def dashboard_resource(ctx: Context) -> str:
    """The last 24 hours at a glance, as JSON: tickets, response and resolution times, SLA
    breaches, approvals, writes by tool, calls by outcome, events per topic, outbox backlog."""
    return (await store.dashboard(_pool(ctx))).model_dump_json(indent=1)


async def support_briefing(period: str, ctx: Context) -> list[Message]:
    """Brief a support lead on the last day or week: volume, waiting times, breaches, approvals.

    Args:
        period: 'day' (the last 24 hours, by hour) or 'week' (the last 7 days, by day).
    """
    if period not in PERIODS:
        raise InvalidArgument("period", "must be 'day' or 'week'")
    until = datetime.now(UTC)
    since = until - PERIODS[period]
    bucket = Bucket.HOUR if period == "day" else Bucket.DAY
    pool = _pool(ctx)
    reports: dict[str, BaseModel] = {
        "ticket_volume": await store.ticket_volume(
            pool, since, until, bucket, [TicketField.CHANNEL]
        ),
        "resolution_times": await store.resolution_times(
            pool, since, until, bucket, [TicketField.PRIORITY]
        ),
        "sla_breaches": await store.sla_breaches(pool, since, until, bucket, None, 20),
        "approval_stats": await store.approval_stats(pool, since, until, bucket, []),
    }
    data = {name: report.model_dump(mode="json") for name, report in reports.items()}
    return [
        Message(
            f"Write a short briefing for a support lead on the last {period}: how many tickets "
            "came in and were solved (and from which channels), first-response and resolution "
            "times against each other, which SLA breaches need attention (by ticket), and "
            "approvals still waiting or decided slowly. Numbers from these reports only:\n\n"
            + json.dumps(data, indent=1)
        )
    ]


PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7)}


async def complete_period(
    _: Analytics, ref: str, argument: str, prefix: str, _others: dict[str, str]
) -> list[str]:
    """The briefing's periods starting with what was typed."""
    if ref != "support-briefing" or argument != "period":
        return []
    return [p for p in PERIODS if p.startswith(prefix)]


def build_server(settings: Settings) -> FastMCP[Any]:
    """The analytics server, on the backends named in ``settings`` (all URLs set)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[Analytics]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(schema_with_outbox(settings, NAME, MIGRATIONS))
            # The other event-driven half: notifications.outbound handed to Celery delivery.
            stack.enter_context(worker_in_thread(settings, "notifications"))
            await stack.enter_async_context(notifications_running(settings))
            consuming = asyncio.Event()

            async def apply(batch: EventBatch) -> None:
                results = await store.apply_events(pool, batch)
                for (topic, _), result in zip(batch, results, strict=True):
                    EVENTS.labels(topic, result).inc()
                if any(topic == Topic.HUMAN_APPROVALS for topic, _ in batch):
                    APPROVALS_PENDING.set(await store.pending_approvals(pool))

            consumer = asyncio.create_task(
                consume_events(
                    settings,
                    group=settings.analytics_group,
                    topics=list(Topic),
                    apply=apply,
                    ready=consuming,
                ),
                name="analytics-consumer",
            )
            try:
                yield Analytics(pool=pool, settings=settings, consuming=consuming)
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer

    server = new_server(NAME, INSTRUCTIONS, lifespan, settings, complete_period)
    for tool in (ticket_volume, resolution_times, sla_breaches, agent_actions, approval_stats):
        server.tool(annotations=READ)(tool)
    server.resource("analytics://dashboard", name="dashboard", mime_type="application/json")(
        dashboard_resource
    )
    server.prompt(name="support-briefing")(support_briefing)
    return server
