"""The error codes every server uses (DESIGN §2).

A tool error reaches the client as an MCP tool error (``isError: true``) whose text reads
``code: field: reason``, e.g. ``not_found: ticket_id: no ticket 42``.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"  # a backend is down; the call may be retried
