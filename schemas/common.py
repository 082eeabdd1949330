"""Field types shared by every server's contracts."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

CustomerId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="The CRM customer id, e.g. 'mia_garcia_4516'."),
]

IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    Field(
        description="Any unique string; repeating a call with the same key changes nothing "
        "and returns the first result. Use one per intended write."
    ),
]


class Role(StrEnum):
    """Who a caller is to the mesh (DESIGN §7). Each role has the scopes of the one before it."""

    AGENT = "agent"  # reads and ordinary writes
    APPROVER = "approver"  # + decide approvals
    ADMIN = "admin"  # + ingest, delete, erase


ROLE_SCOPES: dict[Role, tuple[str, ...]] = {
    Role.AGENT: ("agent",),
    Role.APPROVER: ("agent", "approver"),
    Role.ADMIN: ("agent", "approver", "admin"),
}
