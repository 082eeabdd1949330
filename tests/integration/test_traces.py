"""One trace, from the orchestrator's node through the MCP call to the server's tool span and the
event the write published, recorded by a real OpenTelemetry SDK with an in-memory exporter.

The ticketing server runs in this process, served over real streamable HTTP (uvicorn in a
thread), so that its spans reach the same exporter; the other servers are the session's
subprocesses.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastmcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from orchestrator.policy import Limits
from schemas.roles import Role
from servers.runtime.serve import http_app
from servers.runtime.settings import Settings
from servers.ticketing.server import build_server as build_ticketing
from tests.conftest import read_events, serving_in_thread, token
from tests.integration.test_orchestrator import run


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Every span this process ends, from here on (a process has one tracer provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def ticketing_here(settings: Settings) -> Iterator[str]:
    """The ticketing server in this process, on streamable HTTP; its MCP URL."""
    app = http_app(build_ticketing(settings), settings, ("postgres",), "http://127.0.0.1")
    with serving_in_thread(app) as base_url:
        yield f"{base_url}/mcp"


def one(spans: list[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} spans {name} {attributes}: {[s.name for s in spans]}"
    return found[0]


async def test_one_trace_runs_from_an_orchestrator_node_through_a_tool_to_its_event(
    spans: InMemorySpanExporter, settings: Settings, urls: dict[str, str], ticketing_here: str
) -> None:
    marker = uuid.uuid4().hex[:8]
    async with Client(ticketing_here, auth=token(settings, Role.AGENT, "frontdesk")) as agent:
        made = await agent.call_tool(
            "create_ticket",
            {"subject": f"Shipping {marker}", "description": "How long does shipping take?"},
        )
    assert made.structured_content
    ticket_id = made.structured_content["id"]
    spans.clear()
    await run(settings, {**urls, "ticketing": ticketing_here}, ticket_id, Limits())
    finished = list(spans.get_finished_spans())

    run_span = one(finished, f"ticket {ticket_id}")
    resolve = one(finished, "node resolve")
    assert resolve.parent is not None and run_span.context is not None
    assert resolve.parent.span_id == run_span.context.span_id
    # the server's spans of the comments the resolve node posted (the reply, and a note when a
    # human takes over), in the same trace, under the node
    comments = [s for s in finished if s.name == "tools/call add_comment"]
    assert comments, [s.name for s in finished]
    for tool in comments:
        assert tool.kind is SpanKind.SERVER and tool.parent is not None and resolve.context
        assert tool.context is not None and tool.context.trace_id == resolve.context.trace_id
        assert tool.parent.span_id == resolve.context.span_id

    # and the event that write published carries the trace
    assert settings.kafka_bootstrap
    subject = f"ticket/{ticket_id}"
    events = await read_events(
        settings.kafka_bootstrap,
        "agent.actions",
        lambda evs: any(e.subject == subject and e.type == "ticket.commented" for e in evs),
    )
    commented = next(e for e in events if e.subject == subject and e.type == "ticket.commented")
    assert commented.trace_id == format(resolve.context.trace_id, "032x")
