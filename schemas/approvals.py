"""The approvals server's contract: a request for a human decision on a risky action."""

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


ApprovalId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^apr_[0-9a-f]{32}$"),
    Field(description="The approval's id, e.g. 'apr_3f2a…' (from request_approval)."),
]
ApprovalSubject = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(description="What it is about, e.g. 'ticket/42' or 'order/#W2378156'."),
]
ActionTool = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=200, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$"
    ),
    Field(
        description="The tool the approval allows, as 'server.tool' or 'tool', e.g. "
        "'crm.return_delivered_order_items'."
    ),
]
Amount = Annotated[
    Decimal,
    Field(
        ge=0,
        le=Decimal("1000000000"),
        decimal_places=2,
        description="Money at stake, e.g. 129.99 (the approver sees it).",
    ),
]
Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    Field(description="Why the action is needed, for the approver."),
]
DecisionComment = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000),
    Field(description="The approver's note (shown to the requester)."),
]


class Approval(BaseModel):
    id: str
    subject: str
    action_tool: str
    action_arguments: dict[str, Any]
    amount: Decimal | None
    currency: str
    reason: str
    status: ApprovalStatus = Field(
        description="pending until decided or past expires_at (then 'expired')."
    )
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    comment: str | None = None


class ApprovalPage(BaseModel):
    approvals: list[Approval]
    next_cursor: str | None = Field(None, description="Pass back as `cursor` for the next page.")
