"""Serving a server: stdio, or stateless streamable HTTP at ``/mcp`` with probes and metrics.

Every server is made by ``new_server`` so that all of them behave alike:

- bad arguments reach the client as ``invalid_argument: <field>: <reason>``;
- our own errors (``servers.runtime.errors``) pass through as written; anything else is masked
  to a generic error and logged with its traceback;
- resources, prompts and completions take the same checks as tools' arguments and answer with
  MCP's JSON-RPC codes: ``-32602`` (invalid params: a bad argument or id, an unknown prompt),
  ``-32002`` (resource not found), ``-32603`` (internal, or a backend unavailable), the message
  ``code: field: reason`` and ``data`` ``{"code", "field"}``;
- every tool call is counted and timed on ``/metrics``;
- every tool call checks the caller's scope (``servers.runtime.auth``).

Over HTTP the app requires a bearer token, validates ``Host`` and ``Origin`` (DNS-rebinding
protection) and answers ``/healthz`` (the process is up), ``/readyz`` (its backends answer) and
``/metrics`` without one.
"""

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, cast

import anyio
import mcp.types as mt
import psycopg
import uvicorn
from anyio.streams.memory import MemoryObjectSendStream
from fastmcp import FastMCP
from fastmcp.exceptions import NotFoundError as FastMCPNotFoundError
from fastmcp.exceptions import PromptError, ResourceError, ToolError
from fastmcp.exceptions import ValidationError as FastMCPValidationError
from fastmcp.prompts.base import PromptResult
from fastmcp.resources.base import ResourceResult
from fastmcp.server.context import reset_transport, set_transport
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import ToolResult
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.lowlevel import NotificationOptions
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import McpError
from mcp.shared.message import SessionMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware as AsgiMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import ErrorCode
from servers.runtime import telemetry
from servers.runtime.auth import DEFAULT_SCOPE, http_auth, local_caller, token_caller
from servers.runtime.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SupportMeshError,
    Unavailable,
)
from servers.runtime.limits import (
    MAX_ID_CHARS,
    MAX_PROMPT_ARGUMENT_CHARS,
    MessageLimits,
    argument_problem,
    check_message,
    field_name,
    text_problem,
)
from servers.runtime.settings import Settings

log = logging.getLogger(__name__)

LifespanFn = Callable[[FastMCP[Any]], contextlib.AbstractAsyncContextManager[Any]]
# (lifespan state, prompt name or resource template URI, argument name, typed prefix,
#  other arguments already given) -> the values that complete it
Completer = Callable[[Any, str, str, str, dict[str, str]], Awaitable[list[str]]]


def invalid_argument(exc: ValidationError) -> InvalidArgument:
    """The first problem pydantic found, as ``invalid_argument: <field>: <reason>``."""
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"]) or None
    reason = error["msg"]
    if error["type"] == "missing_argument" or error["type"] == "missing":
        reason = "required"
    elif error["type"] == "unexpected_keyword_argument":
        reason = "not a parameter of this tool"
    return InvalidArgument(field, reason)


RESOURCE_NOT_FOUND = -32002  # MCP's code for resources/read of a URI that names nothing


def rpc_error(exc: SupportMeshError, not_found: int = mt.INVALID_PARAMS) -> McpError:
    """Our typed error as the JSON-RPC error of a request that is not a tool call."""
    codes = {ErrorCode.INVALID_ARGUMENT: mt.INVALID_PARAMS, ErrorCode.NOT_FOUND: not_found}
    data = {"code": exc.code.value, "field": exc.field}
    return McpError(
        mt.ErrorData(code=codes.get(exc.code, mt.INTERNAL_ERROR), message=str(exc), data=data)
    )


def _internal(what: str, exc: Exception) -> McpError:
    """A failure that is not the caller's: a backend down (retryable), or a bug, logged."""
    if isinstance(exc.__cause__, psycopg.OperationalError):
        return rpc_error(Unavailable(None, "the database is unavailable; retry later"))
    if exc.__cause__ is not None:
        log.error("%s failed", what, exc_info=exc.__cause__)
    error = mt.ErrorData(code=mt.INTERNAL_ERROR, message=f"internal error {what}")
    return McpError(error)


def _string_problem(arguments: dict[str, Any], max_chars: int) -> tuple[str, str] | None:
    for name, value in arguments.items():
        if reason := text_problem(name, 100):
            return field_name(name), f"name: {reason}"
        if not isinstance(value, str):
            return field_name(name), "must be a string"
        if reason := text_problem(value, max_chars):
            return field_name(name), reason
    return None


class ToolCallMiddleware(Middleware):
    """Checks the caller's scope, turns errors into typed tool errors and records each call's
    outcome and latency; checks resource reads and prompts as it checks tool arguments."""

    def __init__(self, server: str, settings: Settings, scopes: dict[str, str]) -> None:
        self.server, self.settings, self.scopes = server, settings, scopes

    async def on_call_tool(
        self,
        context: MiddlewareContext[mt.CallToolRequestParams],
        call_next: CallNext[mt.CallToolRequestParams, ToolResult],
    ) -> ToolResult:
        tool, started, outcome = context.message.name, time.perf_counter(), "ok"
        try:
            caller = token_caller() or local_caller(self.settings)
            caller.require(self.scopes.get(tool, DEFAULT_SCOPE), tool)
            if found := argument_problem(context.message.arguments or {}):
                raise InvalidArgument(*found)
            result = await call_next(context)
            # Which server of the mesh answered. A result with _meta also reaches the client as
            # a CallToolResult, which skips the MCP SDK's re-validation of structured output:
            # jsonschema.validate() re-checks the whole output schema on every call (~20 ms for
            # a ticket), for output pydantic has just built from that same model.
            result.meta = {**(result.meta or {}), "server": self.server}
            return result
        except SupportMeshError as exc:
            outcome = exc.code.value
            raise
        except FastMCPValidationError as exc:
            outcome = "invalid_argument"
            if isinstance(exc.__cause__, ValidationError):
                raise invalid_argument(exc.__cause__) from exc
            raise InvalidArgument(None, str(exc)) from exc
        except ValidationError as exc:  # a model built inside the tool from its arguments
            outcome = "invalid_argument"
            raise invalid_argument(exc) from exc
        except FastMCPNotFoundError as exc:
            outcome, tool = "not_found", "(unknown)"  # a label per made-up name would pile up
            raise NotFound("name", "no such tool on this server; see tools/list") from exc
        except ToolError as exc:
            # FastMCP has already masked what the tool raised (and logged its traceback): a
            # generic ToolError whose cause is the real exception.
            if isinstance(exc.__cause__, psycopg.OperationalError):
                outcome = "unavailable"
                raise Unavailable(None, "the database is unavailable; retry later") from exc
            outcome = "internal" if exc.__cause__ is not None else "error"
            raise
        except Exception:
            outcome = "internal"
            log.exception("tool %s failed", tool)
            raise
        finally:
            telemetry.TOOL_CALLS.labels(self.server, tool, outcome).inc()
            telemetry.TOOL_SECONDS.labels(self.server, tool).observe(time.perf_counter() - started)

    async def on_read_resource(
        self,
        context: MiddlewareContext[mt.ReadResourceRequestParams],
        call_next: CallNext[mt.ReadResourceRequestParams, ResourceResult],
    ) -> ResourceResult:
        """A template's parameters are checked as tool arguments are (NUL, lone surrogates,
        length); the handler checks what they must be (a ticket number, say)."""
        uri = str(context.message.uri)
        try:
            server = context.fastmcp_context.fastmcp if context.fastmcp_context else None
            template = await server.get_resource_template(uri) if server is not None else None
            parameters = (template.matches(uri) if template is not None else None) or {}
            if found := _string_problem(parameters, MAX_ID_CHARS):
                raise InvalidArgument(*found)
            if len(uri) > MAX_ID_CHARS * 4:
                raise InvalidArgument("uri", f"at most {MAX_ID_CHARS * 4} characters")
            return await call_next(context)
        except SupportMeshError as exc:
            raise rpc_error(exc, not_found=RESOURCE_NOT_FOUND) from exc
        except FastMCPNotFoundError as exc:
            shown = uri if len(uri) <= 100 else uri[:100] + "..."
            missing = NotFound("uri", f"no resource {shown} here; see resources/list and templates")
            raise rpc_error(missing, not_found=RESOURCE_NOT_FOUND) from exc
        except ResourceError as exc:  # FastMCP masked what the handler raised
            raise _internal("reading the resource", exc) from exc

    async def on_get_prompt(
        self,
        context: MiddlewareContext[mt.GetPromptRequestParams],
        call_next: CallNext[mt.GetPromptRequestParams, PromptResult],
    ) -> PromptResult:
        """Arguments are checked as a tool's are: each one the prompt declares (required ones
        present), each a string without NUL or a lone surrogate, of bounded length."""
        name, arguments = context.message.name, context.message.arguments or {}
        try:
            server = context.fastmcp_context.fastmcp if context.fastmcp_context else None
            prompt = await server.get_prompt(name) if server is not None else None
            if prompt is None:
                shown = ascii(name[:100])
                raise NotFound("name", f"no prompt {shown} on this server; see prompts/list")
            declared = {argument.name: argument for argument in prompt.arguments or []}
            if found := _string_problem(arguments, MAX_PROMPT_ARGUMENT_CHARS):
                raise InvalidArgument(*found)
            if unknown := sorted(set(arguments) - set(declared)):
                raise InvalidArgument(field_name(unknown[0]), "not an argument of this prompt")
            for argument in declared.values():
                if argument.required and argument.name not in arguments:
                    raise InvalidArgument(argument.name, "required")
            return await call_next(context)
        except SupportMeshError as exc:
            raise rpc_error(exc) from exc
        except PromptError as exc:
            raise _internal("rendering the prompt", exc) from exc


def new_server(
    name: str,
    instructions: str,
    lifespan: LifespanFn,
    settings: Settings,
    completer: Completer | None = None,
    scopes: dict[str, str] | None = None,
) -> FastMCP[Any]:
    """A FastMCP server with SupportMesh's error handling, scopes, metrics and completions.

    ``scopes`` names the tools that need more than the ``agent`` scope, e.g.
    ``{"delete_article": "admin"}``.
    """
    server: FastMCP[Any] = FastMCP(
        name,
        instructions=instructions,
        lifespan=lifespan,
        middleware=[ToolCallMiddleware(name, settings, scopes or {})],
        mask_error_details=True,
    )
    if completer is not None:
        register_completions(server, completer)
    return server


def register_completions(server: FastMCP[Any], completer: Completer) -> None:
    """Answer ``completion/complete`` through ``completer``.

    FastMCP has no decorator for this, so the handler goes on the low-level MCP server.
    """

    @server._mcp_server.completion()  # type: ignore[untyped-decorator, no-untyped-call]
    async def complete(
        ref: mt.PromptReference | mt.ResourceTemplateReference,
        argument: mt.CompletionArgument,
        context: mt.CompletionContext | None,
    ) -> mt.Completion:
        name = ref.name if isinstance(ref, mt.PromptReference) else ref.uri
        others = dict(context.arguments or {}) if context else {}
        typed = {argument.name: argument.value}
        if found := _string_problem(typed, MAX_ID_CHARS) or _string_problem(others, MAX_ID_CHARS):
            raise rpc_error(InvalidArgument(*found))
        state = server._mcp_server.request_context.lifespan_context
        values = await completer(state, name, argument.name, argument.value, others)
        return mt.Completion(values=values[:100], total=len(values), hasMore=len(values) > 100)


# --- HTTP -------------------------------------------------------------------------------------


async def _postgres_ready(url: str) -> None:
    conn = await psycopg.AsyncConnection.connect(url, connect_timeout=2)
    await conn.close()


class ScopeChallenge:
    """Answers a request whose token lacks the scope it needs with 403 and the MCP step-up
    challenge (``WWW-Authenticate: Bearer error="insufficient_scope", scope=...``).

    Every MCP request needs ``agent``; a ``tools/call`` needs its tool's scope. Requests without
    a verified token pass on, to be refused with 401 by the bearer-auth layer.
    """

    def __init__(self, app: ASGIApp, scopes: dict[str, str], resource_metadata: str) -> None:
        self.app, self.scopes, self.resource_metadata = app, scopes, resource_metadata
        self.every_scope = {DEFAULT_SCOPE, *scopes.values()}

    def needed(self, body: bytes) -> tuple[str, str]:
        """The scope a request body needs, and what needs it."""
        if b'"tools/call"' in body:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                message = json.loads(body)
                if message.get("method") == "tools/call":
                    tool = str(message["params"]["name"])
                    return self.scopes.get(tool, DEFAULT_SCOPE), tool
        return DEFAULT_SCOPE, "this server"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not isinstance(user, AuthenticatedUser)
        ):
            await self.app(scope, receive, send)
            return
        if self.every_scope <= set(user.scopes):  # whatever it calls, it may: no need to look
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while not messages or messages[-1].get("more_body", False):
            messages.append(await receive())
            if messages[-1]["type"] != "http.request":
                break
        needed, what = self.needed(b"".join(m.get("body", b"") for m in messages))
        if needed not in user.scopes:
            error = PermissionDenied("scope", f"{what} needs the '{needed}' scope")
            challenge = (
                f'Bearer error="insufficient_scope", scope="{needed}", '
                f'error_description="{error}", resource_metadata="{self.resource_metadata}"'
            )
            response = JSONResponse(
                {"error": "insufficient_scope", "error_description": str(error)},
                status_code=403,
                headers={"WWW-Authenticate": challenge},
            )
            await response(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


Probe = Callable[[], Awaitable[None]]
Endpoint = Callable[[Request], Awaitable[Response]]


def probes(
    name: str, settings: Settings, needs: Sequence[str], more: dict[str, Probe] | None = None
) -> dict[str, Endpoint]:
    """``/healthz`` (the process is up), ``/readyz`` (the backends in ``needs``, ``postgres``
    and ``redis``, and the ``more`` checks answer) and ``/metrics`` (Prometheus)."""
    checks: dict[str, Probe] = {}
    if "postgres" in needs and settings.postgres_url:
        url = settings.postgres_url
        checks["postgres"] = lambda: _postgres_ready(url)
    if "redis" in needs and settings.redis_url:
        from redis.asyncio import Redis

        redis_url = settings.redis_url

        async def redis_ready() -> None:
            async with Redis.from_url(redis_url, socket_timeout=2) as client:
                await client.ping()  # type: ignore[misc]

        checks["redis"] = redis_ready
    checks.update(more or {})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "server": name})

    async def readyz(_: Request) -> Response:
        results: dict[str, str] = {}
        for check_name, check in checks.items():
            try:
                await asyncio.wait_for(check(), timeout=3)
                results[check_name] = "ok"
            except Exception as exc:  # a probe reports, it does not raise
                results[check_name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"ready": ready, "backends": results}, status_code=200 if ready else 503
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


def http_app(
    server: FastMCP[Any], settings: Settings, needs: Sequence[str], base_url: str
) -> Starlette:
    """The server's Starlette app: MCP at ``/mcp`` plus ``/healthz``, ``/readyz``, ``/metrics``.

    ``needs`` names the backends ``/readyz`` checks (``postgres``, ``redis``); ``base_url``
    is where clients reach the server (``http://host:port``), for its OAuth metadata.
    """
    for path, endpoint in probes(server.name, settings, needs).items():
        server.custom_route(path, methods=["GET"])(endpoint)
    server.auth = http_auth(settings, base_url)
    limits = AsgiMiddleware(
        MessageLimits,
        server=server.name,
        max_bytes=settings.max_message_bytes,
        require_auth=server.auth is not None,
    )
    middleware = [limits]
    if server.auth is not None:
        tools = next(m for m in server.middleware if isinstance(m, ToolCallMiddleware))
        metadata = f"{base_url}/.well-known/oauth-protected-resource/mcp"
        middleware.append(
            AsgiMiddleware(ScopeChallenge, scopes=tools.scopes, resource_metadata=metadata)
        )
    return server.http_app(
        path="/mcp",
        stateless_http=True,
        json_response=True,
        host_origin_protection=True,
        allowed_hosts=[*settings.allowed_hosts, settings.host],
        allowed_origins=settings.allowed_origins,
        middleware=middleware,
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (``uvicorn[standard]`` brings it everywhere
    but Windows), else None for asyncio's own: the loop ``uvicorn.run`` would pick.

    A tool that awaits PostgreSQL, Redis or Kafka goes through the loop several times per call;
    on uvloop, ``get_ticket`` went from about 510 to 650 calls/s in ``bench.tool_calls``.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Uvicorn(uvicorn.Server):
    """Leaves SIGINT/SIGTERM to the caller, which may run several servers in one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one the system picks).

    Listening before the server starts is what makes a free port safe to use: nobody can take
    it between choosing and serving. Raises ``OSError`` when the port is in use.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serving_http(app: Starlette, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` on ``sock`` (from ``listening_socket``) in this event loop until the block
    exits; the socket is closed after."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    web = _Uvicorn(config)
    task = asyncio.create_task(web.serve(sockets=[sock]))
    try:
        while not web.started:
            if task.done():
                task.result()  # raises why it stopped
                raise RuntimeError(f"HTTP server on {host}:{port} stopped during start-up")
            await asyncio.sleep(0.02)
        yield
    finally:
        web.should_exit = True
        await task
        sock.close()


async def _stdin_lines(limit: int) -> AsyncIterator[bytes]:
    """stdin's lines, read by the event loop rather than a thread, so that a cancelled server
    (SIGTERM) stops at once: a thread blocked on stdin, as the SDK reads it, kept the process
    alive for as long as the client kept stdin open. A line longer than ``limit`` is dropped."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except ValueError:  # a regular file: reading it never blocks for long
        for line in sys.stdin.buffer:
            yield line
        return
    pending, skipping = bytearray(), False
    while chunk := await reader.read(1 << 16):
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[: end + 1])
            del pending[: end + 1]
            if not skipping:
                yield line
            skipping = False
        if len(pending) > limit:
            if not skipping:
                log.warning("dropped a stdio message longer than %d bytes", limit)
            pending.clear()
            skipping = True
    if pending and not skipping:
        yield bytes(pending)


class _CheckedLines:
    """stdin's lines for the MCP SDK's stdio transport. A line ``check_message`` refuses is
    answered here, through the transport's own writer, and never reaches the SDK; one that
    cannot be answered (no request id: a notification, or no JSON at all) is logged and
    dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.replies: MemoryObjectSendStream[SessionMessage] | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        async for line in _stdin_lines(self.limit):
            refusal = check_message(line) if line.strip() else None
            if refusal is None:
                yield line.decode("utf-8", errors="replace")
            elif refusal.reply.get("id") is None or self.replies is None:
                log.warning("dropped a stdio message: %s", refusal.reply.get("error"))
            else:
                reply = mt.JSONRPCMessage.model_validate(refusal.reply)
                await self.replies.send(SessionMessage(reply))


async def serve_stdio(server: FastMCP[Any], settings: Settings) -> None:
    """Serve over stdio, as FastMCP's ``run_stdio_async`` does, with every line checked."""
    token = set_transport("stdio")
    try:
        async with server._lifespan_manager():
            lines = _CheckedLines(settings.max_message_bytes)
            stdin = cast(anyio.AsyncFile[str], lines)  # the SDK only iterates it
            async with stdio_server(stdin=stdin) as (read_stream, write_stream):
                lines.replies = write_stream
                options = server._mcp_server.create_initialization_options(
                    notification_options=NotificationOptions(tools_changed=True)
                )
                await server._mcp_server.run(read_stream, write_stream, options)
    finally:
        reset_transport(token)
