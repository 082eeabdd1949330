"""A typed Python client of the orchestrator service (``supportmesh orchestrator``).

    async with OrchestratorClient("http://127.0.0.1:8700", token) as service:
        submitted = await service.submit(TicketSubmission(subject="...", description="..."))
        async for progress in service.events(submitted.ticket_id):
            print(progress.type)                    # run.started, node.finished, ...
        run = await service.ticket(submitted.ticket_id)   # status, intent, reply, ...

Every answer is a model of ``schemas.orchestrator``; a refusal raises ``ServiceRefused`` with
the HTTP status and the service's typed error (``code: field: reason``).
"""

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from httpx_sse import aconnect_sse
from pydantic import BaseModel, ValidationError

from schemas.orchestrator import (
    History,
    ProgressEvent,
    Replay,
    Replaying,
    Resume,
    Resuming,
    ServiceError,
    Submitted,
    TicketRun,
    TicketSubmission,
)

M = TypeVar("M", bound=BaseModel)
ENDED = ("run.resolved", "run.interrupted", "run.failed")


class ServiceRefused(Exception):
    """The service refused a request: ``status`` (HTTP) and its ``error`` (code, field,
    message)."""

    def __init__(self, status: int, error: ServiceError) -> None:
        super().__init__(f"HTTP {status}: {error.message}")
        self.status, self.error = status, error


class OrchestratorClient:
    """The service at ``base_url`` (``http://host:8700``), called with bearer ``token``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.http.aclose()

    async def submit(
        self, ticket: TicketSubmission, idempotency_key: str | None = None
    ) -> Submitted:
        """Open the ticket on the ticketing server and queue its run (``agent``). The same
        ``idempotency_key`` opens one ticket however often the call is retried."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = ticket.model_dump(mode="json", exclude_none=True)
        return await self._call("POST", "/tickets", Submitted, json=body, headers=headers)

    async def ticket(self, ticket_id: int) -> TicketRun:
        """Where the ticket's run is: status, node, pending approval, intent, reply, ..."""
        return await self._call("GET", f"/tickets/{ticket_id}", TicketRun)

    async def history(self, ticket_id: int, limit: int = 100) -> History:
        """The run's checkpoints, newest first."""
        path = f"/tickets/{ticket_id}/history"
        return await self._call("GET", path, History, params={"limit": limit})

    async def resume(self, ticket_id: int, approval_id: str) -> Resuming:
        """Wake the run paused on ``approval_id`` once it is decided (``approver``)."""
        body = Resume(approval_id=approval_id).model_dump()
        return await self._call("POST", f"/tickets/{ticket_id}/resume", Resuming, json=body)

    async def replay(self, ticket_id: int, checkpoint_id: str) -> Replaying:
        """Run the ticket again from one of its checkpoints (``admin``)."""
        body = Replay(checkpoint_id=checkpoint_id).model_dump()
        return await self._call("POST", f"/tickets/{ticket_id}/replay", Replaying, json=body)

    async def events(self, ticket_id: int, after: int = 0) -> AsyncIterator[ProgressEvent]:
        """The run's progress as it happens, from after event ``after``, until the run is
        resolved, interrupted (waiting for an approval) or failed."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        path = f"/tickets/{ticket_id}/events"
        async with aconnect_sse(
            self.http, "GET", path, headers=headers, timeout=httpx.Timeout(None, connect=10)
        ) as source:
            if source.response.status_code == 204:  # the run has ended: nothing after `after`
                return
            if source.response.status_code != 200:
                await source.response.aread()
                raise _refused(source.response)
            async for sent in source.aiter_sse():
                yield ProgressEvent(id=int(sent.id), type=sent.event, event=json.loads(sent.data))

    async def follow(self, ticket_id: int, after: int = 0) -> int:
        """Read the run's events from after ``after`` until it ends (resolved, waiting or
        failed); the last event's id, to follow it again from after a resume."""
        last = after
        async for progress in self.events(ticket_id, after):
            last = progress.id
            if progress.type in ENDED:
                break
        return last

    async def until_settled(self, ticket_id: int, after: int = 0) -> TicketRun:
        """Follow the run until it ends, then its state."""
        await self.follow(ticket_id, after)
        return await self.ticket(ticket_id)

    async def ready(self) -> bool:
        """Whether the service is ready (``/readyz``: PostgreSQL, the servers, Kafka)."""
        return (await self.http.get("/readyz")).status_code == 200

    async def _call(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        answer = await self.http.request(method, path, **kwargs)
        if answer.status_code >= 400:
            raise _refused(answer)
        return model.model_validate_json(answer.content)


def _refused(answer: httpx.Response) -> ServiceRefused:
    try:
        error = ServiceError.model_validate_json(answer.content)
    except ValidationError:
        error = ServiceError(error="unavailable", message=answer.text[:500] or answer.reason_phrase)
    return ServiceRefused(answer.status_code, error)
