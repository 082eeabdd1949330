"""The contract of a notification: the ``data`` of a ``notification.requested`` event.

Servers put these on ``notifications.outbound`` through their outbox; the notifications
consumer validates ``data`` with ``Notification`` before anything is sent. Addresses are
checked for shape only (one ``@``, no spaces, no header characters), not deliverability, so
that internal domains such as ``supportmesh.localhost`` pass. The title becomes a mail
``Subject``: it is one line, so no event can add headers of its own.
"""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NOTIFICATION_REQUESTED = "notification.requested"


class NotificationKind(StrEnum):
    TICKET_REPLY = "ticket.reply"
    APPROVAL_WAITING = "approval.waiting"
    APPROVAL_EXPIRING = "approval.expiring"
    TICKET_SLA_BREACHED = "ticket.sla_breached"


# local@domain, neither part holding what would end or split an address in a mail header
ADDRESS_PATTERN = r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+$"
Address = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=ADDRESS_PATTERN),
    Field(description="An email address, e.g. 'ada@example.com'."),
]
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=300, pattern=r"^[^\r\n]*$"),
    Field(description="The one-line subject."),
]


class Notification(BaseModel):
    """What to tell whom: the ``data`` of a ``notification.requested`` event."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: NotificationKind
    to: list[Address] = Field(min_length=1, max_length=100, description="One or more addresses.")
    title: Title
    body: str = Field(max_length=100_000, description="Plain text.")
    ticket_id: int | None = None
    approval_id: str | None = Field(None, max_length=100)
