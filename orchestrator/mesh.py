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

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import anyio
import httpx
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from langchain_core.tools import BaseTool
from langchain_mcp_adapters.interceptors import MCPToolCallRequest, MCPToolCallResult
from langchain_mcp_adapters.tools import load_mcp_tools
from langgraph.config import get_stream_writer
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.types import CONNECTION_CLOSED, CallToolResult, TextContent
from opentelemetry import propagate, trace
from referencing import Registry

from orchestrator.state import Metrics
from schemas.errors import ErrorCode

T = TypeVar("T")
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


async def _unless_ended(work: Awaitable[T], ended: asyncio.Event, what: str) -> T:
    """``work``'s result, or ``Unavailable`` as soon as ``ended`` is set (the connection to the
    server failed): the MCP SDK would leave the request waiting for its timeout."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(ended.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise Unavailable(what, f"unavailable: {what}: the connection failed")
        return task.result()
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()


class _WatchedTransport(httpx.AsyncHTTPTransport):
    """An HTTP transport that reports a failed request (the server is gone) as it happens; the
    MCP SDK would leave the call waiting for its timeout."""

    def __init__(self, on_failure: Callable[[], None]) -> None:
        super().__init__()
        self.on_failure = on_failure

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TransportError:
            self.on_failure()
            raise


class ServerLink:
    """One server's MCP session, held open by a task of its own.

    The MCP SDK's HTTP transport fails its whole task group when a server cannot be reached,
    and that failure would end whatever task entered it: the ticket's run. Held in a task of
    its own, a failure ends only the session: a call waiting on it raises ``Unavailable`` at
    once (not after its timeout), and the next call opens a new session to the server.
    """

    def __init__(self, name: str, url: str, token: str) -> None:
        self.name = name
        self.url = url
        self.token = token
        self.session: ValidatingSession | None = None
        self._holder: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()  # set when the current session ends (or its server fails)
        self._failure: BaseException | None = None
        self._opening = asyncio.Lock()  # one new session at a time

    async def open(self) -> ValidatingSession:
        """The live session, opening one if there is none (``Unavailable`` if it cannot)."""
        async with self._opening:
            return await self._open()

    async def _open(self) -> ValidatingSession:
        if self.session is not None and self._holder is not None and not self.ended.is_set():
            return self.session
        if self._holder is not None:
            self.ended.set()
            await self._holder  # the old session's end, before a new one starts
        ready = asyncio.Event()
        self._failure = None
        self.ended = asyncio.Event()
        self._holder = asyncio.create_task(
            self._hold(ready, self.ended), name=f"mcp-session-{self.name}"
        )
        await ready.wait()
        if self.session is None:
            raise Unavailable("connect", f"unavailable: {self.name}: {self._failure}")
        return self.session

    async def _hold(self, ready: asyncio.Event, closing: asyncio.Event) -> None:
        try:
            async with (
                httpx.AsyncClient(
                    transport=_WatchedTransport(closing.set),
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=httpx.Timeout(30, read=300),
                ) as http,
                streamable_http_client(self.url, http_client=http) as (read, write, _),
                ValidatingSession(read, write) as session,
            ):
                await _unless_ended(session.initialize(), closing, self.name)
                self.session = session
                ready.set()
                await closing.wait()
        except Exception as exc:  # the transport failed: this session is over, not the run
            self._failure = exc
        finally:
            self.session = None
            ready.set()

    async def close(self) -> None:
        self.ended.set()
        if self._holder is not None:
            await self._holder


# The trace of the run in this task (a service's runs share one Mesh, each its own trace).
RUN_TRACE: ContextVar[str | None] = ContextVar("RUN_TRACE", default=None)


def _report_call(name: str, outcome: str, started: float) -> None:
    try:
        write = get_stream_writer()
    except RuntimeError:  # not inside a graph run
        return
    write(
        {"tool": name, "outcome": outcome, "ms": round((time.perf_counter() - started) * 1000, 1)}
    )


@dataclass
class Mesh:
    """One run's links, one per server, and the tools they offer."""

    links: dict[str, ServerLink]
    trace_id: str
    tools_by_name: dict[str, BaseTool] = field(default_factory=dict)
    server_of: dict[str, str] = field(default_factory=dict)

    def traceparent(self) -> str:
        """The caller's span when OpenTelemetry has one, else a fresh span of the run's trace
        (``RUN_TRACE`` where a run sets one: runs of a service share one mesh)."""
        carrier: dict[str, str] = {}
        if trace.get_current_span().get_span_context().is_valid:
            propagate.inject(carrier)
        trace_id = RUN_TRACE.get() or self.trace_id
        return carrier.get("traceparent") or f"00-{trace_id}-{os.urandom(8).hex()}-01"

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """``tools/call`` on the server that offers ``name``, with the trace in ``_meta``; a
        server that cannot be reached, or whose session broke, raises ``Unavailable``.

        Inside a graph run, each call is also reported on the run's ``custom`` stream as
        ``{"tool", "outcome", "ms"}`` (outcome ``ok`` or the error code)."""
        started, outcome = time.perf_counter(), "unavailable"
        try:
            result = await self._call_tool(name, arguments)
            outcome = _error_text(result).split(":", 1)[0] if result.isError else "ok"
            return result
        except ToolFailed as exc:
            outcome = exc.code
            raise
        finally:
            _report_call(name, outcome, started)

    async def _call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        server = self.server_of[name]
        link = self.links[server]
        session = await link.open()
        call = session.call_tool(
            name,
            arguments,
            read_timeout_seconds=CALL_TIMEOUT,
            meta={"traceparent": self.traceparent()},
        )
        try:
            return await _unless_ended(call, link.ended, server)
        except McpError as exc:
            if exc.error.code in (CONNECTION_CLOSED, httpx.codes.REQUEST_TIMEOUT):
                raise Unavailable(name, f"unavailable: {server}: {exc}") from exc
            raise ToolFailed(name, f"invalid_argument: {exc.error.message}") from exc
        except (
            httpx.TransportError,
            OSError,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ) as exc:
            link.ended.set()
            raise Unavailable(name, f"unavailable: {server}: {exc!r}") from exc

    def tools(self, names: Iterable[str]) -> list[BaseTool]:
        """The LangChain tools called ``names``: what a node lets a model use, and no more."""
        return [self.tools_by_name[name] for name in names]

    def calls(self, *allowed: str) -> "Calls":
        """A node's calls, to the tools it names and no others."""
        return Calls(self, frozenset(allowed))

    async def _intercept(
        self,
        request: MCPToolCallRequest,
        handler: Callable[[MCPToolCallRequest], Awaitable[MCPToolCallResult]],
    ) -> MCPToolCallResult:
        # The adapters send no request _meta, and hold the session they were loaded from:
        # call through our link, which adds the trace and reopens a broken session.
        return await self.call_tool(request.name, request.args)


@dataclass
class Calls:
    """The tool calls one node makes, counted and timed for the run's metrics."""

    mesh: Mesh
    allowed: frozenset[str]  # the tools this node may call
    count: int = 0
    errors: int = 0
    slowest_ms: float = 0.0

    async def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        """The tool's structured result; its error as ``ToolFailed`` (``Unavailable`` when the
        server or a backend is down)."""
        if name not in self.allowed:
            raise PermissionError(f"{name} is not one of this node's tools: {sorted(self.allowed)}")
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
    mesh = Mesh(links={}, trace_id=trace_id or os.urandom(16).hex())
    try:
        for server, url in urls.items():
            link = mesh.links[server] = ServerLink(server, url, token)
            session = await link.open()
            for tool in await load_mcp_tools(
                session, server_name=server, tool_interceptors=[mesh._intercept]
            ):
                mesh.tools_by_name[tool.name] = tool
                mesh.server_of[tool.name] = server
        yield mesh
    finally:
        for link in mesh.links.values():
            await link.close()
