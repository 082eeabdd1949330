"""JSON logs and Prometheus metrics (DESIGN §8), the same for every server.

Logs go to stderr (stdout belongs to the stdio transport). Metrics carry a ``server`` label so
that several servers in one process (``supportmesh up``) stay apart on ``/metrics``.
"""

import logging
import os
import sys

from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

TOOL_CALLS = Counter(
    "supportmesh_tool_calls_total", "MCP tool calls by outcome", ["server", "tool", "outcome"]
)
TOOL_SECONDS = Histogram(
    "supportmesh_tool_seconds",
    "MCP tool call latency",
    ["server", "tool"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MESSAGES_REFUSED = Counter(
    "supportmesh_messages_refused_total",
    "JSON-RPC messages answered by the input limits before reaching the server",
    ["server", "status"],
)
OUTBOX_UNSENT = Gauge("supportmesh_outbox_unsent", "Outbox events not yet on Kafka", ["server"])
EVENTS_PUBLISHED = Counter(
    "supportmesh_events_published_total", "Events published to Kafka", ["server", "topic"]
)
EVENTS_SET_ASIDE = Counter(
    "supportmesh_events_set_aside_total",
    "Outbox events Kafka can never take (too large), kept in the outbox but not published",
    ["server", "topic"],
)
CONSUMER_LAG = Gauge(
    "supportmesh_consumer_lag",
    "Records on a topic a consumer group has not read yet (this process's partitions)",
    ["group", "topic"],
)
EVENTS_MALFORMED = Counter(
    "supportmesh_events_malformed_total",
    "Kafka records a consumer skipped because they were not events",
    ["group", "topic"],
)


def configure_logging(level: str = "INFO") -> None:
    """One JSON object per line on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    fastmcp_log = logging.getLogger("fastmcp")  # has a rich handler of its own: use ours
    fastmcp_log.handlers[:] = []
    fastmcp_log.propagate = True
    noisy_loggers = (
        "aiokafka",
        "httpx",
        "mcp.server.lowlevel.server",
        "mcp.server.streamable_http",  # a line per stateless request
        "mcp.server.streamable_http_manager",
        "uvicorn.access",
    )
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def configure_tracing(service: str) -> bool:
    """Export OpenTelemetry spans by OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
    (the standard ``OTEL_*`` variables configure the exporter; the service is named
    ``supportmesh-<service>`` unless ``OTEL_SERVICE_NAME`` says otherwise); otherwise tracing
    stays off and costs nothing. Whether it is on."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"supportmesh-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # flushed when the process exits
    return True
