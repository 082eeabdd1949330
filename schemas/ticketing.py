"""Ticketing contracts: tickets, comments, status history, SLA (DESIGN §2).

The ``Annotated`` field types below are shared by the tool signatures and the models, so that a
limit is written once and reads the same in the tool's input schema and its output.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StrictInt, StringConstraints, model_validator

from schemas.common import CustomerId


class TicketStatus(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    SOLVED = "solved"
    CLOSED = "closed"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Channel(StrEnum):
    EMAIL = "email"
    CHAT = "chat"
    PHONE = "phone"
    WEB = "web"
    API = "api"


MAX_SUBJECT = 200
MAX_BODY = 20_000
MAX_TAGS = 20

TicketId = Annotated[StrictInt, Field(ge=1, description="Ticket number, e.g. 42.")]
Subject = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_SUBJECT),
    Field(description=f"One-line summary of the customer's problem (1-{MAX_SUBJECT} chars)."),
]
Body = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_BODY),
    Field(description=f"Free text, markdown allowed (1-{MAX_BODY} chars)."),
]
Tag = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        min_length=1,
        max_length=50,
        pattern=r"^[A-Za-z0-9_\-:.]+$",
    ),
]
Tags = Annotated[
    list[Tag],
    Field(max_length=MAX_TAGS, description="Labels: lowercase letters, digits, _ - : ."),
]
Assignee = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="Agent or team the ticket is assigned to."),
]


class SlaTarget(BaseModel):
    first_response_minutes: int = Field(gt=0)
    resolution_minutes: int = Field(gt=0)


class SlaPolicy(BaseModel):
    """Targets per priority, in calendar minutes from the ticket's creation.

    Set ``SUPPORTMESH_SLA_POLICY`` to JSON of this shape to change them.
    """

    targets: dict[Priority, SlaTarget] = Field(
        default_factory=lambda: {
            Priority.URGENT: SlaTarget(first_response_minutes=60, resolution_minutes=4 * 60),
            Priority.HIGH: SlaTarget(first_response_minutes=4 * 60, resolution_minutes=24 * 60),
            Priority.NORMAL: SlaTarget(first_response_minutes=8 * 60, resolution_minutes=48 * 60),
            Priority.LOW: SlaTarget(first_response_minutes=24 * 60, resolution_minutes=96 * 60),
        }
    )
    reopen_window_hours: int = Field(
        7 * 24, ge=0, description="How long after it was solved a ticket may be reopened."
    )

    @model_validator(mode="after")
    def _every_priority_has_targets(self) -> "SlaPolicy":
        missing = [p.value for p in Priority if p not in self.targets]
        if missing:
            raise ValueError(f"sla policy has no targets for {', '.join(missing)}")
        return self


class SlaClockState(StrEnum):
    RUNNING = "running"  # not yet met, due in the future
    MET = "met"
    BREACHED = "breached"


class SlaClock(BaseModel):
    due_at: datetime
    met_at: datetime | None
    state: SlaClockState


class Sla(BaseModel):
    """SLA state computed when the ticket is read."""

    first_response: SlaClock
    resolution: SlaClock


class SlaBreachNotice(BaseModel):
    """An SLA clock found breached, announced once (``ticket.sla_breached``)."""

    ticket_id: int
    clock: str = Field(description="'first_response' or 'resolution'.")
    priority: Priority
    due_at: datetime
    breached_at: datetime
    assignee: str | None


class Comment(BaseModel):
    id: int
    ticket_id: int
    author: str
    body: str
    public: bool = Field(description="True: a reply the customer sees; false: internal note.")
    created_at: datetime


class StatusChange(BaseModel):
    from_status: TicketStatus | None
    to_status: TicketStatus
    actor: str
    at: datetime


class Ticket(BaseModel):
    id: int
    subject: str
    description: str
    status: TicketStatus
    priority: Priority
    channel: Channel
    customer_id: str | None
    requester_email: str | None
    assignee: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    first_responded_at: datetime | None
    solved_at: datetime | None
    closed_at: datetime | None
    sla: Sla


class TicketDetail(Ticket):
    comments: list[Comment]
    history: list[StatusChange]


class TicketPage(BaseModel):
    tickets: list[Ticket]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


EmailAddress = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    Field(description="The requester's email address."),
]


class NewTicket(BaseModel):
    subject: Subject
    description: Body
    priority: Priority = Priority.NORMAL
    channel: Channel = Channel.API
    customer_id: CustomerId | None = None
    requester_email: EmailAddress | None = None
    assignee: Assignee | None = None
    tags: Tags = Field(default_factory=list)


class TicketChange(BaseModel):
    status: TicketStatus | None = None
    priority: Priority | None = None
    assignee: Assignee | None = None
    unassign: bool = False
    add_tags: Tags = Field(default_factory=list)
    remove_tags: Tags = Field(default_factory=list)


class TicketQuery(BaseModel):
    text: str | None = Field(None, max_length=500)
    status: list[TicketStatus] = Field(default_factory=list)
    priority: list[Priority] = Field(default_factory=list)
    customer_id: CustomerId | None = None
    tag: Tag | None = None
    assignee: Assignee | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = Field(20, ge=1, le=100)
