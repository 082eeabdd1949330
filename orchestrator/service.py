"""``supportmesh orchestrator``: the ticket graph as a service (DESIGN §6).

It takes every new ticket (from ``customer.requests``, or ``POST /tickets``), runs it, and waits
for as long as a human takes to decide an approval, across restarts and replicas; the runs,
their checkpoints and their events live in PostgreSQL (schema ``orchestrator``), so any replica
can go on with any ticket. The API (bearer JWT as on the servers: ``agent`` to submit and read,
``approver`` to resume, ``admin`` to replay):

    POST /tickets                     create a ticket on the ticketing server and run it (202)
    GET  /tickets/{id}                status, current node, pending approval, decisions so far
    GET  /tickets/{id}/history        its checkpoints, newest first (time travel)
    POST /tickets/{id}/replay         run again from one of them (admin; writes are keyed, so
                                      what was done is not done twice)
    POST /tickets/{id}/resume         wake a paused run: {"approval_id"}; the decision is read
                                      from the approvals server, never from the request
    GET  /tickets/{id}/events         server-sent events of the run's progress
    GET  /healthz /readyz /metrics

Errors are JSON ``{"error": code, "field": ..., "message": "code: field: reason"}`` with the
HTTP status of the code (400, 401, 403, 404, 409, 413, 503), unmatched routes (404, field
``path``) and methods (405, field ``method``, with ``Allow``) included. Input is checked before
any query: numbers in paths and queries are ASCII digits within 64 bits, bodies are JSON with
no NUL, lone surrogate or number JSON cannot carry (``servers.runtime.limits``), and an
``Idempotency-Key`` is at most ``MAX_IDEMPOTENCY_KEY`` characters.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from orchestrator import runner as runs
from orchestrator.consumer import consume
from orchestrator.graph import RunContext, build_graph
from orchestrator.mesh import Mesh, ToolFailed, Unavailable, open_mesh
from orchestrator.model import chat_model
from orchestrator.policy import Limits
from orchestrator.run import SCHEMA, postgres_checkpointer, thread
from orchestrator.runner import Graph, Runner
from orchestrator.tasks import schedule
from schemas.errors import ErrorCode
from schemas.orchestrator import (
    Checkpoint,
    History,
    Links,
    Replay,
    Replaying,
    Resume,
    Resuming,
    Submitted,
    TicketRun,
    TicketSubmission,
)
from schemas.roles import Role
from servers.runtime.auth import (
    Caller,
    RememberingVerifier,
    issue_token,
    local_caller,
    token_verifier,
)
from servers.runtime.database import Pool
from servers.runtime.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    SupportMeshError,
    Unauthenticated,
)
from servers.runtime.events import schema_with_outbox
from servers.runtime.keys import joined_key
from servers.runtime.limits import MAX_INT, body_problem, id_number
from servers.runtime.serve import invalid_argument, probes
from servers.runtime.settings import Settings
from servers.runtime.tasks import beat_in_thread, worker_in_thread

log = logging.getLogger(__name__)

NAME = "orchestrator"
MIGRATIONS = Path(__file__).parent / "migrations"
MAX_BODY_BYTES = 1 << 20
MAX_IDEMPOTENCY_KEY = 255  # characters, as Stripe's API takes
ACTOR = "orchestrator"  # who the service is to the servers, unless its token says otherwise
M = TypeVar("M", bound=BaseModel)
STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAVAILABLE: 503,
}


@dataclass
class Service:
    settings: Settings
    pool: Pool
    graph: Graph
    mesh: Mesh
    verifier: RememberingVerifier | None
    consuming: asyncio.Event  # the Kafka consumer has its partitions


async def _open_mesh(stack: contextlib.AsyncExitStack, urls: dict[str, str], bearer: str) -> Mesh:
    """Sessions to every server, waiting up to a minute for servers still starting."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(60),
        reraise=True,
    ):
        with attempt:
            return await stack.enter_async_context(open_mesh(urls, bearer))
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def running_service(settings: Settings, urls: dict[str, str]) -> AsyncIterator[Service]:
    """The service's parts, running until the block exits: its schema and outbox relay, the
    checkpointer, sessions to the servers, the runners, the Kafka consumer, and Celery's
    worker and beat for checkpoint pruning."""
    assert settings.postgres_url
    bearer = (
        settings.orchestrator_token.get_secret_value()
        if settings.orchestrator_token
        else issue_token(settings, Role.AGENT, ACTOR, ttl_seconds=7 * 24 * 3600)
    )
    limits = Limits(
        settings.approval_threshold, settings.vip_lifetime_spend, settings.approval_expires_seconds
    )
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(schema_with_outbox(settings, SCHEMA, MIGRATIONS))
        # The consumer first: joining its group takes seconds, which the rest overlaps. What it
        # reads waits in the runs table for the runners.
        consuming = asyncio.Event()
        consumer = asyncio.create_task(
            consume(settings, pool, consuming), name="orchestrator-consumer"
        )
        stack.push_async_callback(_stopped, consumer)
        saver = await stack.enter_async_context(
            postgres_checkpointer(settings.postgres_url, settings.orchestrator_concurrency + 2)
        )
        mesh = await _open_mesh(stack, urls, bearer)
        graph = build_graph(saver)
        context = RunContext(mesh, limits, chat_model(settings))
        runner = Runner(
            pool, settings.postgres_url, graph, context, settings.orchestrator_concurrency
        )
        stack.enter_context(worker_in_thread(settings, NAME))
        stack.enter_context(beat_in_thread(settings, NAME, schedule(settings)))
        runners = asyncio.create_task(runner.run_forever(), name="orchestrator-runner")
        stack.push_async_callback(_stopped, runners)
        verifier = token_verifier(settings) if settings.http_auth else None
        yield Service(settings, pool, graph, mesh, verifier, consuming)


async def _stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- requests ---------------------------------------------------------------------------------


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def _caller(request: Request, scope: str, what: str) -> Caller:
    """Who sent the request, if their token has ``scope``."""
    service = _service(request)
    if service.verifier is None:  # SUPPORTMESH_HTTP_AUTH=false: as the servers do
        caller = local_caller(service.settings)
        caller.require(scope, what)
        return caller
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthenticated("authorization", "send 'Authorization: Bearer <token>'")
    token = await service.verifier.verify_token(header[7:].strip())
    if token is None:
        raise Unauthenticated("authorization", "the bearer token is invalid or expired")
    caller = Caller(
        actor=str(token.claims.get("sub") or token.client_id), scopes=frozenset(token.scopes)
    )
    caller.require(scope, what)
    return caller


def _count(text: str, field: str, low: int, high: int) -> int:
    """A number from a query or header: ASCII digits, from ``low`` to ``high``. The length is
    checked before ``int()``, which refuses (and is slow on) thousands of digits."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and low <= int(text) <= high):
        raise InvalidArgument(field, f"a number from {low} to {high}")
    return int(text)


def _ticket_id(request: Request) -> int:
    return id_number(request.path_params["ticket_id"], "ticket_id", "a ticket number")


async def _body(request: Request, model: type[M]) -> M:
    declared = request.headers.get("content-length")
    if declared and _count(declared, "Content-Length", 0, MAX_INT) > MAX_BODY_BYTES:
        raise _TooLarge()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _TooLarge()
    if found := body_problem(body or b"{}"):
        raise InvalidArgument(*found)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise invalid_argument(exc) from exc


class _TooLarge(Exception):
    pass


def _json(content: BaseModel, status_code: int = 200) -> JSONResponse:
    return JSONResponse(content.model_dump(mode="json"), status_code=status_code)


def _links(ticket_id: int) -> Links:
    base = f"/tickets/{ticket_id}"
    return Links(self=base, events=f"{base}/events", history=f"{base}/history")


async def submit(request: Request) -> Response:
    """Open the ticket on the ticketing server, then queue its run."""
    caller = await _caller(request, "agent", "submitting a ticket")
    ticket = await _body(request, TicketSubmission)
    service = _service(request)
    arguments = ticket.model_dump(mode="json", exclude_none=True)
    if key := request.headers.get("idempotency-key"):
        # The same key from the same caller opens one ticket, however often it is retried. The
        # ticketing server keeps the digest of the whole (caller, key): distinct keys never meet.
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument("Idempotency-Key", f"at most {MAX_IDEMPOTENCY_KEY} characters")
        digest = hashlib.sha256(joined_key(caller.actor, key).encode()).hexdigest()
        arguments["idempotency_key"] = f"orchestrator-api:{digest}"
    created = await service.mesh.calls("create_ticket").call("create_ticket", **arguments)
    ticket_id = int(created["id"])
    async with service.pool.connection() as conn:
        await runs.enqueue(conn, ticket_id, caller.actor)
    return _json(Submitted(ticket_id=ticket_id, status="queued", links=_links(ticket_id)), 202)


async def show(request: Request) -> Response:
    """Where the ticket's run is: status, current node, pending approval, decisions so far."""
    await _caller(request, "agent", "reading a ticket's run")
    ticket_id, service = _ticket_id(request), _service(request)
    run = await runs.get_run(service.pool, ticket_id)
    snapshot = await service.graph.aget_state(thread(ticket_id))
    if run is None and snapshot.created_at is None:
        raise NotFound("ticket_id", f"the orchestrator has no run of ticket {ticket_id}")
    values = snapshot.values
    pending = snapshot.interrupts[0].value if snapshot.interrupts else None
    return _json(
        TicketRun(
            ticket_id=ticket_id,
            status=run["status"] if run else ("waiting" if pending else "resolved"),
            node=snapshot.next[0] if snapshot.next else (run or {}).get("node"),
            pending_approval=pending,
            intent=(values.get("triage") or {}).get("intent"),
            approval=values.get("approval"),
            plan=values.get("plan"),
            outcome=values.get("outcome"),
            reply=(values.get("reply") or {}).get("text"),
            decisions=values.get("decisions", []),
            checkpoint_id=(snapshot.config.get("configurable") or {}).get("checkpoint_id"),
            run={k: v for k, v in (run or {}).items() if k not in ("ticket_id", "status")},
            links=_links(ticket_id),
        )
    )


async def history(request: Request) -> Response:
    """The ticket's checkpoints, newest first: what each step wrote and what came next."""
    await _caller(request, "agent", "reading a ticket's history")
    ticket_id, service = _ticket_id(request), _service(request)
    limit = _count(request.query_params.get("limit", "100"), "limit", 1, 1000)
    checkpoints = [
        Checkpoint(
            checkpoint_id=snap.config["configurable"]["checkpoint_id"],
            parent_checkpoint_id=(snap.parent_config or {})
            .get("configurable", {})
            .get("checkpoint_id"),
            created_at=snap.created_at,
            step=(snap.metadata or {}).get("step"),
            source=(snap.metadata or {}).get("source"),
            next=list(snap.next),
            interrupted=bool(snap.interrupts),
        )
        async for snap in service.graph.aget_state_history(thread(ticket_id), limit=limit)
    ]
    if not checkpoints:
        raise NotFound("ticket_id", f"ticket {ticket_id} has no checkpoints")
    return _json(History(ticket_id=ticket_id, checkpoints=checkpoints))


async def replay(request: Request) -> Response:
    """Run the ticket again from one of its checkpoints (for debugging a bad run)."""
    caller = await _caller(request, "admin", "replaying a ticket")
    ticket_id, service = _ticket_id(request), _service(request)
    chosen = await _body(request, Replay)
    config: RunnableConfig = {
        "configurable": {"thread_id": str(ticket_id), "checkpoint_id": chosen.checkpoint_id}
    }
    if (await service.graph.aget_state(config)).created_at is None:
        raise NotFound(
            "checkpoint_id", f"ticket {ticket_id} has no checkpoint {chosen.checkpoint_id}"
        )
    async with service.pool.connection() as conn, conn.transaction():
        await runs.enqueue(conn, ticket_id, caller.actor)
        await runs.wake_for_replay(conn, ticket_id, chosen.checkpoint_id)
    log.info("%s replays ticket %s from %s", caller.actor, ticket_id, chosen.checkpoint_id)
    return _json(
        Replaying(ticket_id=ticket_id, status="queued", replay_from=chosen.checkpoint_id), 202
    )


async def resume(request: Request) -> Response:
    """Wake the run paused on an approval once the approvals server holds its decision."""
    caller = await _caller(request, "approver", "resuming a ticket")
    ticket_id, service = _ticket_id(request), _service(request)
    asked = await _body(request, Resume)
    try:
        record = await service.mesh.calls("get_approval").call(
            "get_approval", approval_id=asked.approval_id
        )
    except ToolFailed as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            raise NotFound(
                "approval_id", f"the approvals server holds no approval {asked.approval_id}"
            ) from exc
        raise
    if record["subject"] != f"ticket:{ticket_id}":
        raise Conflict("approval_id", f"{asked.approval_id} is for {record['subject']}")
    if record["status"] == "pending":
        raise Conflict("approval_id", f"{asked.approval_id} is not decided yet")
    run = await runs.get_run(service.pool, ticket_id)
    if run is None or run["approval_id"] != asked.approval_id:
        raise Conflict("approval_id", f"ticket {ticket_id} is not waiting for {asked.approval_id}")
    async with service.pool.connection() as conn:
        await runs.wake_on_decision(conn, ticket_id)
    log.info("%s resumes ticket %s after %s", caller.actor, ticket_id, asked.approval_id)
    return _json(
        Resuming(
            ticket_id=ticket_id,
            approval_id=asked.approval_id,
            decision=record["status"],
            decided_by=record.get("decided_by"),
            status="resuming",
        ),
        202,
    )


async def events(request: Request) -> Response:
    """Server-sent events of the run: ``run.started``, ``node.started``, ``tool.called``,
    ``node.finished``, then ``run.interrupted``, ``run.resolved`` or ``run.failed``, where the
    stream ends. ``Last-Event-ID`` (or ``?after=``) continues after an event of this ticket's
    already seen (another id is a 400); when the run has ended (resolved or failed) with nothing
    after it, the answer is 204, which tells an EventSource to stop reconnecting. After a
    ``run.interrupted`` it waits for the run's resumption, with a ping every 15 s."""
    await _caller(request, "agent", "following a ticket's run")
    ticket_id, service = _ticket_id(request), _service(request)
    if await runs.get_run(service.pool, ticket_id) is None:
        raise NotFound("ticket_id", f"the orchestrator has no run of ticket {ticket_id}")
    header = request.headers.get("last-event-id")
    field = "Last-Event-ID" if header is not None else "after"
    after = _count(header or request.query_params.get("after", "0"), field, 0, MAX_INT)
    if after and not await runs.has_event(service.pool, ticket_id, after):
        raise InvalidArgument(field, f"not an event id of ticket {ticket_id}'s stream")
    if await runs.ended_after(service.pool, ticket_id, after):
        # Nothing more will come: 204 tells an EventSource not to reconnect (WHATWG HTML).
        return Response(status_code=204)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for seq, event in runs.stream_events(service.pool, ticket_id, after):
            yield ServerSentEvent(data=json.dumps(event), event=event["type"], id=str(seq))

    return EventSourceResponse(stream(), ping=15)


# --- the app ----------------------------------------------------------------------------------


async def _refused(request: Request, exc: Exception) -> Response:
    """Our typed errors, and a tool's error from the servers, as JSON with their status."""
    if isinstance(exc, _TooLarge):
        error = InvalidArgument("body", f"larger than {MAX_BODY_BYTES} bytes")
        return JSONResponse(
            {"error": error.code.value, "field": "body", "message": str(error)}, status_code=413
        )
    if isinstance(exc, SupportMeshError):
        code, field, message = exc.code, exc.field, str(exc)
    elif isinstance(exc, ToolFailed):
        known = {c.value for c in ErrorCode}
        code = ErrorCode(exc.code) if exc.code in known else ErrorCode.UNAVAILABLE
        parts = exc.text.split(": ", 2)
        field, message = (parts[1] if len(parts) == 3 else None), exc.text
    else:
        raise exc
    headers = (
        {"WWW-Authenticate": 'Bearer realm="supportmesh"'} if code == "unauthenticated" else {}
    )
    return JSONResponse(
        {"error": code.value, "field": field, "message": message},
        status_code=STATUS[code],
        headers=headers,
    )


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route: 404; no such method on it: 405, with
    ``Allow``), in the service's error shape rather than as plain text."""
    assert isinstance(exc, HTTPException)
    path = request.url.path if len(request.url.path) <= 100 else request.url.path[:100] + "..."
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        error: SupportMeshError = InvalidArgument(
            "method", f"{request.method} is not allowed on {path}; use {allowed}"
        )
    elif exc.status_code == 404:
        error = NotFound("path", f"no {path} here; the API is in the service's README section")
    else:
        error = InvalidArgument(None, str(exc.detail))
    return JSONResponse(
        {"error": error.code.value, "field": error.field, "message": str(error)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _failed(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback; the caller gets the error shape, never plain text."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = "internal: the service failed; its log has the details"
    return JSONResponse({"error": "internal", "field": None, "message": message}, status_code=500)


def service_app(settings: Settings, urls: dict[str, str]) -> Starlette:
    """The orchestrator service's Starlette app; its parts start with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running_service(settings, urls) as service:
            app.state.service = service
            yield

    async def servers_ready() -> None:
        for link in app.state.service.mesh.links.values():
            await link.open()

    async def consuming() -> None:
        if not app.state.service.consuming.is_set():
            raise RuntimeError("the Kafka consumer has no partitions yet")

    routes = [
        Route("/tickets", submit, methods=["POST"]),
        Route("/tickets/{ticket_id}", show, methods=["GET"]),
        Route("/tickets/{ticket_id}/history", history, methods=["GET"]),
        Route("/tickets/{ticket_id}/replay", replay, methods=["POST"]),
        Route("/tickets/{ticket_id}/resume", resume, methods=["POST"]),
        Route("/tickets/{ticket_id}/events", events, methods=["GET"]),
    ]
    checks = probes(NAME, settings, ("postgres",), {"servers": servers_ready, "kafka": consuming})
    routes += [Route(path, endpoint, methods=["GET"]) for path, endpoint in checks.items()]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            SupportMeshError: _refused,
            ToolFailed: _refused,
            _TooLarge: _refused,
            HTTPException: _no_route,
            Exception: _failed,
        },
    )
    return app
