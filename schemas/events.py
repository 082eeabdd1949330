"""The event envelope and the topics it travels on (DESIGN §5)."""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Topic(StrEnum):
    CUSTOMER_REQUESTS = "customer.requests"
    AGENT_ACTIONS = "agent.actions"
    HUMAN_APPROVALS = "human.approvals"
    SYSTEM_ANALYTICS = "system.analytics"
    NOTIFICATIONS_OUTBOUND = "notifications.outbound"


class Event(BaseModel):
    """One event. Consumers dedupe by ``id``: delivery is at least once."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str = Field(description="What happened, e.g. 'ticket.created'.")
    source: str = Field(description="The server or service that wrote it, e.g. 'ticketing'.")
    subject: str = Field(description="The aggregate it is about, e.g. 'ticket/42'; the Kafka key.")
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, Any] = Field(default_factory=dict)
    trace_id: str | None = None
