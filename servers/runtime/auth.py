"""Who is calling a tool.

For now every call acts as the configured identity (``SUPPORTMESH_ACTOR``), over stdio and
HTTP alike; bearer-token authentication of the HTTP transport (DESIGN §7) replaces that for
HTTP. The trace id comes from the request's ``_meta`` (``trace_id``, or a W3C ``traceparent``).
"""

from dataclasses import dataclass
from typing import Any

from fastmcp import Context

from servers.runtime.settings import Settings


@dataclass(frozen=True)
class Caller:
    """Who is calling (for audit and history) and the trace the call belongs to."""

    actor: str
    trace_id: str | None = None


def current_caller(ctx: Context, settings: Settings) -> Caller:
    meta: dict[str, Any] = {}
    request_meta = ctx.request_context.meta if ctx.request_context else None
    if request_meta is not None:
        meta = request_meta.model_dump(exclude_none=True)
    trace_id = meta.get("trace_id")
    if trace_id is None and isinstance(meta.get("traceparent"), str):
        parts = meta["traceparent"].split("-")
        trace_id = parts[1] if len(parts) == 4 else None
    return Caller(actor=settings.actor, trace_id=str(trace_id) if trace_id else None)
