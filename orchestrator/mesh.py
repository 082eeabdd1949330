"""The orchestrator's connections to the mesh: one MCP session per server for a whole run.

Every capability is reached over MCP (streamable HTTP), never by importing a server. A run holds
one client session per server (``langchain-mcp-adapters`` would open one per tool call), sends
a bearer token on each, and puts the W3C trace context (``traceparent``) in the ``_meta`` of
every ``tools/call``, so the servers' spans and events join the run's trace.

Nodes call tools by name (``Calls.call``), or hand a model the LangChain tools they may use
(``Mesh.tools``); both go through the same session, with the same ``_meta``. A tool error comes
back as ``ToolFailed`` carrying the server's ``code: field: reason``; ``unavailable`` (and a
server that cannot be reached) is ``Unavailable``, the one error nodes retry.
"""

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from langchain_core.tools import BaseTool
from langchain_mcp_adapters.interceptors import MCPToolCallRequest, MCPToolCallResult
from langchain_mcp_adapters.tools import load_mcp_tools
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.types import CallToolResult, TextContent
from opentelemetry import propagate, trace
from referencing import Registry

from orchestrator.state import Metrics
from schemas.errors import ErrorCode

SERVERS = ("ticketing", "crm", "knowledge", "memory", "approvals")
CALL_TIMEOUT = timedelta(seconds=60)


class ToolFailed(Exception):
    """A tool answered with an error: ``code`` is the server's error code (``not_found``, …)."""

    def __init__(self, tool: str, text: str) -> None:
        super().__init__(f"{tool}: {text}")
        self.tool = tool
        self.text = text
        self.code = text.split(":", 1)[0].strip()


class Unavailable(ToolFailed):
    """A backend or a server is down; the call may succeed later. The one error nodes retry."""


class ValidatingSession(ClientSession):
    """The MCP SDK's client session, with each tool's output-schema validator built once.

    The SDK checks every tool result against the tool's output schema with
    ``jsonschema.validate()``, which builds a validator on every call: about 80 ms a call for
    our schemas on these machines, against 0.6 ms with a validator kept per tool. The check
    itself is the same (same draft, same empty registry), only done with a kept validator.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._validators: dict[str, Validator] = {}

    async def _validate_tool_result(self, name: str, result: CallToolResult) -> None:
        if name not in self._tool_output_schemas:
            await self.list_tools()
        schema = self._tool_output_schemas.get(name)
        if schema is None:
            return
        if result.structuredContent is None:
            raise RuntimeError(
                f"Tool {name} has an output schema but returned no structured content"
            )
        validator = self._validators.get(name)
        if validator is None:
            validator = validator_for(schema)(schema, registry=Registry())
            self._validators[name] = validator
        problem = best_match(validator.iter_errors(result.structuredContent))
        if problem is not None:
            raise RuntimeError(f"Invalid structured content returned by tool {name}: {problem}")


def _error_text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent)) or "error"


@dataclass
class Mesh:
    """One run's sessions, one per server, and the tools they offer."""

    sessions: dict[str, ClientSession]
    trace_id: str
    tools_by_name: dict[str, BaseTool] = field(default_factory=dict)
    server_of: dict[str, str] = field(default_factory=dict)

    def traceparent(self) -> str:
        """The caller's span when OpenTelemetry has one, else a fresh span of the run's trace."""
        carrier: dict[str, str] = {}
        if trace.get_current_span().get_span_context().is_valid:
            propagate.inject(carrier)
        return carrier.get("traceparent") or f"00-{self.trace_id}-{os.urandom(8).hex()}-01"

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """``tools/call`` on the server that offers ``name``, with the trace in ``_meta``; a
        server that cannot be reached raises ``Unavailable``."""
        session = self.sessions[self.server_of[name]]
        try:
            return await session.call_tool(
                name,
                arguments,
                read_timeout_seconds=CALL_TIMEOUT,
                meta={"traceparent": self.traceparent()},
            )
        except (httpx.TransportError, McpError, OSError) as exc:
            raise Unavailable(name, f"unavailable: {self.server_of[name]}: {exc}") from exc

    def tools(self, names: Iterable[str]) -> list[BaseTool]:
        """The LangChain tools called ``names``: what a node lets a model use, and no more."""
        return [self.tools_by_name[name] for name in names]

    def calls(self) -> "Calls":
        return Calls(self)

    async def _intercept(
        self,
        request: MCPToolCallRequest,
        handler: Callable[[MCPToolCallRequest], Awaitable[MCPToolCallResult]],
    ) -> MCPToolCallResult:
        # The adapters send no request _meta: call through our session, which adds it.
        return await self.call_tool(request.name, request.args)


@dataclass
class Calls:
    """The tool calls one node makes, counted and timed for the run's metrics."""

    mesh: Mesh
    count: int = 0
    errors: int = 0
    slowest_ms: float = 0.0

    async def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        """The tool's structured result; its error as ``ToolFailed`` (``Unavailable`` when the
        server or a backend is down)."""
        started = time.perf_counter()
        self.count += 1
        try:
            result = await self.mesh.call_tool(name, arguments)
        except Unavailable:
            self.errors += 1
            raise
        finally:
            self.slowest_ms = max(self.slowest_ms, (time.perf_counter() - started) * 1000)
        if result.isError:
            self.errors += 1
            text = _error_text(result)
            if text.startswith(ErrorCode.UNAVAILABLE):
                raise Unavailable(name, text)
            raise ToolFailed(name, text)
        return result.structuredContent or {}

    def metrics(self) -> Metrics:
        return Metrics(
            counts={"tool_calls": self.count, "tool_errors": self.errors},
            maxima={"slowest_tool_call_ms": round(self.slowest_ms, 1)} if self.count else {},
        )


@contextlib.asynccontextmanager
async def open_mesh(
    urls: Mapping[str, str], token: str, *, trace_id: str | None = None
) -> AsyncIterator[Mesh]:
    """Sessions to the servers at ``urls`` ({server name: MCP URL}), held until the block exits."""
    mesh = Mesh(sessions={}, trace_id=trace_id or os.urandom(16).hex())
    async with contextlib.AsyncExitStack() as stack:
        for server, url in urls.items():
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=httpx.Timeout(30, read=300),
                )
            )
            read, write, _ = await stack.enter_async_context(
                streamable_http_client(url, http_client=http)
            )
            session = await stack.enter_async_context(ValidatingSession(read, write))
            await session.initialize()
            mesh.sessions[server] = session
            for tool in await load_mcp_tools(
                session, server_name=server, tool_interceptors=[mesh._intercept]
            ):
                mesh.tools_by_name[tool.name] = tool
                mesh.server_of[tool.name] = server
        yield mesh
