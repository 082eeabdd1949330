"""The analytics server's contract: report windows and what each report returns.

Every report covers a window ``[since, until)`` cut into buckets (hour, day or week, starting at
midnight UTC; weeks on Mondays) and, where a report allows, split by one or more fields. A row
is one bucket and one combination of the grouped fields' values; ``group`` maps each grouped
field to its value (null where the events did not say).
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

from schemas.common import Timestamp


class Bucket(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"


class TicketField(StrEnum):
    """Fields tickets are grouped by: as the ticket is now (its latest priority, and the
    category the orchestrator tagged it with, ``category:<name>``)."""

    CHANNEL = "channel"
    PRIORITY = "priority"
    CATEGORY = "category"


class ActionField(StrEnum):
    """Fields actions are grouped by. Writes (``agent.actions``) have a tool, an actor, an
    outcome (``ok``, or the error code of an orchestrator tool call) and a source (the server or
    service); calls (metrics samples) have a tool, an outcome and a server."""

    TOOL = "tool"
    ACTOR = "actor"
    OUTCOME = "outcome"
    SOURCE = "source"


class ActionKind(StrEnum):
    WRITES = "writes"
    CALLS = "calls"


class ApprovalField(StrEnum):
    ACTION_TOOL = "action_tool"
    REQUESTED_BY = "requested_by"


Since = Annotated[
    Timestamp | None,
    Field(
        description="Start of the window (inclusive), ISO 8601, e.g. '2026-11-30T00:00:00Z'; "
        "no timezone means UTC. Default: 24 hours before `until`."
    ),
]
Until = Annotated[
    Timestamp | None,
    Field(description="End of the window (exclusive), ISO 8601. Default: now."),
]
BucketArg = Annotated[Bucket, Field(description="Bucket size: 'hour', 'day' or 'week'.")]


class Window(BaseModel):
    since: datetime
    until: datetime
    bucket: Bucket
    group_by: list[str]


class VolumeTotals(BaseModel):
    created: int
    solved: int
    reopened: int


class VolumeRow(VolumeTotals):
    bucket_start: datetime
    group: dict[str, str | None]


class TicketVolume(Window):
    """Tickets created, solved and reopened in the window, each counted when it happened."""

    rows: list[VolumeRow]
    totals: VolumeTotals


class Durations(BaseModel):
    """How long something took, over ``count`` tickets, in seconds (null when none)."""

    count: int
    p50_seconds: float | None
    p90_seconds: float | None
    max_seconds: float | None


class TimesRow(BaseModel):
    bucket_start: datetime
    group: dict[str, str | None]
    first_response: Durations
    resolution: Durations


class ResolutionTimes(Window):
    """First response (created → first public reply), over the tickets first answered in the
    window, and resolution (created → solved), over those solved in it, by the bucket it
    happened in. A reopened ticket counts once it is solved again."""

    rows: list[TimesRow]
    first_response: Durations
    resolution: Durations


class BreachRow(BaseModel):
    bucket_start: datetime
    priority: str | None
    clock: str
    count: int


class Breach(BaseModel):
    ticket_id: int
    clock: str = Field(description="'first_response' or 'resolution'.")
    priority: str | None
    due_at: datetime | None
    breached_at: datetime = Field(description="When the breach was detected.")
    assignee: str | None


class SlaBreaches(Window):
    """SLA clocks breached in the window, counted by priority and clock, newest listed first."""

    rows: list[BreachRow]
    total: int
    breaches: list[Breach]


class ActionRow(BaseModel):
    bucket_start: datetime
    group: dict[str, str | None]
    count: int


class AgentActions(Window):
    """Writes (one per event on ``agent.actions``: a server's write, an orchestrator tool call)
    or calls (every MCP tool call, from the servers' metrics samples) in the window."""

    kind: ActionKind
    rows: list[ActionRow]
    total: int


class ApprovalTotals(BaseModel):
    requested: int
    approved: int
    rejected: int
    expired: int
    decision_p50_seconds: float | None
    decision_p90_seconds: float | None


class ApprovalRow(ApprovalTotals):
    bucket_start: datetime
    group: dict[str, str | None]


class ApprovalStats(Window):
    """Approvals requested, and decided or expired, in the window (each counted when it
    happened); decision latency (requested → approved or rejected) over those decided."""

    rows: list[ApprovalRow]
    totals: ApprovalTotals


class Dashboard(BaseModel):
    """The last 24 hours at a glance."""

    since: datetime
    until: datetime
    tickets: VolumeTotals
    first_response: Durations
    resolution: Durations
    sla_breaches: dict[str, int] = Field(description="Breaches by clock.")
    approvals: ApprovalTotals
    approvals_pending: int = Field(description="Requested and not yet decided or expired.")
    writes_by_tool: dict[str, int]
    calls: dict[str, int] = Field(description="Tool calls by outcome (metrics samples).")
    events_by_topic: dict[str, int]
    outbox_backlog: dict[str, int] = Field(
        description="Events not yet on Kafka, by server, from each one's latest sample."
    )
    last_event_at: datetime | None
