"""Who a caller is to the mesh (DESIGN §7): roles and the scopes each grants.

No pydantic here: the command line reads it to answer ``--help`` at once.
"""

from enum import StrEnum


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
