"""OpenTelemetry in the orchestrator: a span for each run of a ticket and one for each node.

A run's span is in the ticket's own trace (the trace id the runs row keeps, or the mesh's), so
a run resumed hours later, by another replica, continues the same trace. Each MCP call carries
the current span as ``traceparent`` in ``_meta`` (``orchestrator.mesh``); FastMCP opens the
server's span under it, and the server writes the trace id into the events of the write. With
no tracer provider configured (``servers.runtime.telemetry.configure_tracing``) the spans cost
nothing and the trace id still travels.
"""

import contextlib
import functools
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags

TRACER = trace.get_tracer("supportmesh.orchestrator")
P = ParamSpec("P")
R = TypeVar("R")


def traced(name: str, node: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``node`` run inside a span ``node <name>``. An interrupt (waiting for a human) is how a
    node pauses, not an error: the span records no exception for it."""

    @functools.wraps(node)  # LangGraph reads the node's signature (runtime, config)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with TRACER.start_as_current_span(
            f"node {name}", record_exception=False, set_status_on_exception=False
        ) as span:
            span.set_attribute("langgraph.node", name)
            return await node(*args, **kwargs)

    return run


@contextlib.contextmanager
def run_span(ticket_id: int, trace_id: str | None, how: str = "run") -> Iterator[Span]:
    """The span of one run of the ticket, in trace ``trace_id`` (32 hex digits) when given."""
    parent: Any = None
    if trace_id and len(trace_id) == 32:
        with contextlib.suppress(ValueError):
            remote = SpanContext(
                trace_id=int(trace_id, 16),
                span_id=random.getrandbits(64) or 1,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
    with TRACER.start_as_current_span(
        f"ticket {ticket_id}", context=parent, record_exception=False
    ) as span:
        span.set_attribute("supportmesh.ticket_id", ticket_id)
        span.set_attribute("supportmesh.run", how)
        yield span
