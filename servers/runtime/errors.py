"""The errors a tool raises on purpose. Each reaches the client as an MCP tool error.

    ToolError (fastmcp)
     └── SupportMeshError         text "code: field: reason"
          ├── InvalidArgument     a value is malformed or out of range
          ├── NotFound            the id names nothing
          ├── Conflict            the state forbids it (illegal transition, reused key, lost race)
          ├── PermissionDenied    the caller's role does not allow it
          ├── Unauthenticated     no valid credentials
          └── Unavailable         a backend is down; retry later

Anything else is a bug: the client sees a generic error, the log has the traceback and
``/metrics`` counts the call as ``internal``. Our own errors are the caller's to act on, so they
are logged below ERROR: ``unavailable`` as a warning, the rest as information.
"""

import logging

from fastmcp.exceptions import ToolError

from schemas.errors import ErrorCode


class SupportMeshError(ToolError):
    code: ErrorCode
    level = logging.INFO

    def __init__(self, field: str | None, reason: str) -> None:
        self.field, self.reason = field, reason
        text = f"{self.code}: {field}: {reason}" if field else f"{self.code}: {reason}"
        super().__init__(text, log_level=self.level)


class InvalidArgument(SupportMeshError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(SupportMeshError):
    code = ErrorCode.NOT_FOUND


class Conflict(SupportMeshError):
    code = ErrorCode.CONFLICT


class PermissionDenied(SupportMeshError):
    code = ErrorCode.PERMISSION_DENIED


class Unauthenticated(SupportMeshError):
    code = ErrorCode.UNAUTHENTICATED


class Unavailable(SupportMeshError):
    code = ErrorCode.UNAVAILABLE
    level = logging.WARNING
