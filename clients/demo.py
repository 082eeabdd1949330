"""``supportmesh demo``: a morning's tickets handled end to end by the whole mesh, and a report.

The demo drives a running mesh (``supportmesh up``) only through what any user has: the
orchestrator service's API (``clients.orchestrator``) and the MCP servers. It submits the demo
set's tickets (``demo_data/tickets.jsonl``, or ``tau2_tickets.jsonl`` with ``--data tau2``),
follows each run to its end with a progress bar, approves
one of those waiting for a human through the approvals server's ``decide_approval`` tool (as a
support lead, a second user), follows that one to its end, then reads each ticket's SLA state
from the ticketing server and the analytics dashboard, and reports.
"""

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastmcp import Client
from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from clients.demo_data import DemoData
from clients.mesh import Mesh
from clients.orchestrator import OrchestratorClient
from schemas.analytics import Dashboard
from schemas.orchestrator import TicketSubmission
from schemas.roles import Role
from servers.runtime.auth import issue_token
from servers.runtime.settings import Settings

LEAD = "lead@supportmesh.demo"  # the second user, who approves
FRONT_DESK = "frontdesk@supportmesh.demo"  # who submits the tickets


class Expected(BaseModel):
    intent: str
    action: str | None
    run: Literal["resolved", "waiting"]


class DemoTicket(BaseModel):
    """One demo ticket and what the demo expects of its run (before any approval)."""

    id: str
    customer_id: str | None
    requester_email: str
    channel: str
    subject: str
    message: str
    expect: Expected


class TicketLine(BaseModel):
    """A line of the report: one ticket, as the service and the servers tell it."""

    demo_id: str
    ticket_id: int
    subject: str
    channel: str
    intent: str | None
    action: str | None
    approval: str | None
    run: str
    expected_run: str
    reply: str
    citations: list[str]
    seconds: float
    first_response_sla: str
    resolution_sla: str


class Decision(BaseModel):
    ticket_id: int
    approval_id: str
    decided_by: str
    requested_at: datetime
    decided_at: datetime
    resumed_seconds: float


class DemoReport(BaseModel):
    data_set: str = "demo"
    started_at: datetime
    seconds: float
    tickets: list[TicketLine]
    decision: Decision | None
    dashboard: Dashboard
    servers: dict[str, str]
    orchestrator: str

    def count(self, run: str) -> int:
        return sum(t.run == run for t in self.tickets)


def demo_tickets(data: DemoData) -> list[DemoTicket]:
    return [DemoTicket.model_validate_json(line) for line in data.tickets.read_text().splitlines()]


async def run_demo(settings: Settings, mesh: Mesh, console: Console, data: DemoData) -> DemoReport:
    """Put the demo set's tickets through the mesh and gather the report."""
    assert mesh.orchestrator, "up runs the orchestrator service"
    tickets, started, clock = demo_tickets(data), datetime.now(UTC), time.monotonic()
    agent = issue_token(settings, Role.AGENT, FRONT_DESK, ttl_seconds=3600)
    lead = issue_token(settings, Role.APPROVER, LEAD, ttl_seconds=3600)
    async with OrchestratorClient(mesh.orchestrator, agent, timeout=120) as service:
        submitted: dict[str, int] = {}
        seconds: dict[str, float] = {}
        last_event: dict[str, int] = {}
        with Progress(console=console, transient=True) as bar:
            handling = bar.add_task("Handling the demo tickets", total=len(tickets))

            async def handle(ticket: DemoTicket) -> None:
                began = time.monotonic()
                made = await service.submit(
                    TicketSubmission(
                        subject=ticket.subject,
                        description=ticket.message,
                        customer_id=ticket.customer_id,
                        requester_email=ticket.requester_email,
                        channel=ticket.channel,
                    ),
                    idempotency_key=f"demo-{ticket.id}",
                )
                submitted[ticket.id] = made.ticket_id
                last_event[ticket.id] = await service.follow(made.ticket_id)
                seconds[ticket.id] = time.monotonic() - began
                bar.advance(handling)

            await asyncio.gather(*(handle(t) for t in tickets))
        runs = {t.id: await service.ticket(submitted[t.id]) for t in tickets}
        waiting = [t for t in tickets if runs[t.id].status == "waiting"]
        decision = None
        if waiting:
            chosen = waiting[0]
            console.print(
                f"{len(waiting)} tickets wait for a human's approval; {LEAD} approves the first "
                f"(ticket {submitted[chosen.id]}) through the approvals server..."
            )
            decision = await _approve(
                service, mesh, lead, submitted[chosen.id], last_event[chosen.id]
            )
            runs[chosen.id] = await service.ticket(submitted[chosen.id])
    async with Client(mesh.servers["ticketing"], auth=agent) as ticketing:
        slas = {t.id: await _sla(ticketing, submitted[t.id]) for t in tickets}
    dashboard = await _dashboard(mesh, agent, len(tickets))
    lines = [
        TicketLine(
            demo_id=t.id,
            ticket_id=submitted[t.id],
            subject=t.subject,
            channel=t.channel,
            intent=runs[t.id].intent,
            action=_action(runs[t.id].plan, runs[t.id].outcome),
            approval=(runs[t.id].approval or {}).get("status"),
            run=runs[t.id].status,
            expected_run=t.expect.run,
            reply=runs[t.id].reply or "",
            citations=_citations(runs[t.id].reply or ""),
            seconds=round(seconds[t.id], 2),
            first_response_sla=slas[t.id][0],
            resolution_sla=slas[t.id][1],
        )
        for t in tickets
    ]
    return DemoReport(
        data_set=data.name,
        started_at=started,
        seconds=round(time.monotonic() - clock, 1),
        tickets=lines,
        decision=decision,
        dashboard=dashboard,
        servers=mesh.servers,
        orchestrator=mesh.orchestrator,
    )


async def _approve(
    service: OrchestratorClient, mesh: Mesh, lead: str, ticket_id: int, after: int
) -> Decision:
    """Approve the approval the ticket waits for, as the lead, and follow the run to its end."""
    run = await service.ticket(ticket_id)
    approval_id = str((run.approval or {})["id"])
    async with Client(mesh.servers["approvals"], auth=lead) as approvals:
        decided = await approvals.call_tool(
            "decide_approval",
            {"approval_id": approval_id, "decision": "approve", "comment": "Approved in the demo"},
        )
    record = decided.structured_content or {}
    began = time.monotonic()
    await service.follow(ticket_id, after)  # the service wakes it from human.approvals
    return Decision(
        ticket_id=ticket_id,
        approval_id=approval_id,
        decided_by=str(record.get("decided_by")),
        requested_at=record["requested_at"],
        decided_at=record["decided_at"],
        resumed_seconds=round(time.monotonic() - began, 2),
    )


async def _sla(ticketing: Client[Any], ticket_id: int) -> tuple[str, str]:
    ticket = (await ticketing.call_tool("get_ticket", {"ticket_id": ticket_id})).structured_content
    assert ticket is not None
    return ticket["sla"]["first_response"]["state"], ticket["sla"]["resolution"]["state"]


async def _dashboard(mesh: Mesh, bearer: str, created: int) -> Dashboard:
    """The analytics dashboard once it has counted every demo ticket (it reads events)."""
    async with Client(mesh.servers["analytics"], auth=bearer) as analytics:
        deadline = time.monotonic() + 60
        while True:
            text = (await analytics.read_resource("analytics://dashboard"))[0]
            dashboard = Dashboard.model_validate_json(getattr(text, "text", "{}"))
            if dashboard.tickets.created >= created or time.monotonic() > deadline:
                return dashboard
            await asyncio.sleep(0.5)


def _action(plan: dict[str, Any] | None, outcome: dict[str, Any] | None) -> str | None:
    """The run's writes and how they went, e.g. "cancel_pending_order: done"."""
    tools = ", ".join(a["tool"] for a in (plan or {}).get("actions", []))
    if not tools:
        return None
    return f"{tools}: {outcome.get('status') if outcome else 'planned'}"


def _citations(reply: str) -> list[str]:
    """The help-centre articles a reply cites, ``[article-id]``."""
    found = []
    for part in reply.split("[")[1:]:
        article = part.split("]", 1)[0]
        if article and " " not in article and len(article) < 100:
            found.append(article)
    return found


def print_report(report: DemoReport, console: Console) -> None:
    table = Table(title="SupportMesh demo: the tickets")
    for column in ("#", "subject", "intent", "action", "approval", "run", "time", "SLA"):
        table.add_column(column, overflow="fold")
    for t in report.tickets:
        table.add_row(
            str(t.ticket_id),
            t.subject[:40],
            t.intent or "",
            t.action or "",
            t.approval or "",
            t.run,
            f"{t.seconds:.1f} s",
            f"{t.first_response_sla}/{t.resolution_sla}",
        )
    console.print(table)
    console.print("Replies (excerpts):")
    for t in report.tickets:
        excerpt = " ".join(" ".join(t.reply.split("\n\n")[1:2]).split())[:110]
        cited = f" [{', '.join(t.citations)}]" if t.citations else ""
        console.print(f"  #{t.ticket_id}: {excerpt}{cited}", highlight=False)
    d = report.dashboard
    lines = [
        f"{len(report.tickets)} tickets in {report.seconds:.0f} s: {report.count('resolved')} "
        f"resolved, {report.count('waiting')} waiting for approval, {report.count('failed')} "
        "failed.",
    ]
    if report.decision:
        lines.append(
            f"Approved by {report.decision.decided_by}: ticket {report.decision.ticket_id} "
            f"({report.decision.approval_id}), resolved {report.decision.resumed_seconds:.1f} s "
            "after the decision."
        )
    lines += [
        f"Analytics (last 24 h): {d.tickets.created} created, {d.tickets.solved} solved; first "
        f"response p50 {d.first_response.p50_seconds} s; resolution p50 "
        f"{d.resolution.p50_seconds} s; SLA breaches {sum(d.sla_breaches.values())}; approvals "
        f"{d.approvals.requested} requested, {d.approvals.approved} approved, "
        f"{d.approvals_pending} pending.",
        "Events per topic: " + ", ".join(f"{k} {v}" for k, v in sorted(d.events_by_topic.items())),
    ]
    console.print("\n".join(lines))


def write_report(report: DemoReport, folder: Path) -> Path:
    """The report as ``report.json`` and a self-contained ``report.html``; the HTML's path."""
    from clients.demo_html import render

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.model_dump_json(indent=1))
    page = folder / "report.html"
    page.write_text(render(report))
    return page
