"""The orchestrator service's API (``supportmesh orchestrator``): what it answers, as the service
builds it and as ``clients.orchestrator`` reads it."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.ticketing import NewTicket

RunStatus = Literal["queued", "running", "waiting", "resolved", "failed"]


class TicketSubmission(NewTicket):
    """``POST /tickets``: the ticket to open, as ``create_ticket`` takes it."""

    model_config = ConfigDict(extra="forbid")


class Resume(BaseModel):
    """``POST /tickets/{id}/resume``: which approval was decided. Not the decision itself: the
    run reads it from the approvals server."""

    model_config = ConfigDict(extra="forbid")
    approval_id: str = Field(min_length=1, max_length=100)


class Replay(BaseModel):
    """``POST /tickets/{id}/replay``: the checkpoint to run the ticket again from."""

    model_config = ConfigDict(extra="forbid")
    checkpoint_id: str = Field(min_length=1, max_length=100)


class Links(BaseModel):
    self: str
    events: str
    history: str


class Submitted(BaseModel):
    """``POST /tickets`` (202): the ticket was opened and its run queued."""

    ticket_id: int
    status: Literal["queued"]
    links: Links


class TicketRun(BaseModel):
    """``GET /tickets/{id}``: where the ticket's run is."""

    ticket_id: int
    status: RunStatus
    node: str | None = Field(description="The step running or next; None once it ended.")
    pending_approval: dict[str, Any] | None = Field(
        description="While waiting: the HITL request (action_requests, review_configs)."
    )
    intent: str | None
    approval: dict[str, Any] | None = Field(
        description="The approval the run asked for (id, status), as it last read it."
    )
    plan: dict[str, Any] | None
    outcome: dict[str, Any] | None
    reply: str | None
    decisions: list[dict[str, Any]]
    checkpoint_id: str | None
    run: dict[str, Any] = Field(description="The runs row: attempts, approval id, times, ...")
    links: Links


class Checkpoint(BaseModel):
    checkpoint_id: str
    parent_checkpoint_id: str | None
    created_at: datetime | None
    step: int | None
    source: str | None
    next: list[str]
    interrupted: bool


class History(BaseModel):
    """``GET /tickets/{id}/history``: the run's checkpoints, newest first."""

    ticket_id: int
    checkpoints: list[Checkpoint]


class Replaying(BaseModel):
    """``POST /tickets/{id}/replay`` (202)."""

    ticket_id: int
    status: Literal["queued"]
    replay_from: str


class Resuming(BaseModel):
    """``POST /tickets/{id}/resume`` (202): the decision as the approvals server holds it."""

    ticket_id: int
    approval_id: str
    decision: str
    decided_by: str | None
    status: Literal["resuming"]


class ProgressEvent(BaseModel):
    """One server-sent event of ``GET /tickets/{id}/events``: the event's stream id (for
    ``Last-Event-ID``), its type (``node.finished``, ``run.resolved``, ...) and the event."""

    id: int
    type: str
    event: dict[str, Any]


class ServiceError(BaseModel):
    """Every refusal: ``{"error": code, "field": ..., "message": "code: field: reason"}``."""

    error: str
    field: str | None = None
    message: str
