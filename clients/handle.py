"""What ``supportmesh handle`` does: run one ticket through the orchestrator's graph against the
servers of a running ``supportmesh up``, printing each step as it finishes.

The graph reaches the servers over MCP at the URLs ``up`` recorded in ``DATA_DIR/mesh.json``,
as the agent ``orchestrator`` (a token signed with the mesh's key), and checkpoints in the
mesh's PostgreSQL: a ticket paused for approval is resumed later, by any process, with
``--resume APPROVAL_ID``.
"""

from rich.console import Console

from clients.mesh import Mesh
from orchestrator.graph import RunContext, build_graph
from orchestrator.mesh import open_mesh
from orchestrator.model import chat_model
from orchestrator.policy import Limits
from orchestrator.run import describe, lease, postgres_checkpointer, steps
from schemas.roles import Role
from servers.runtime.auth import issue_token
from servers.runtime.settings import Settings

ACTOR = "orchestrator"


async def handle_ticket(
    settings: Settings, mesh: Mesh, ticket_id: int, resume: str | None, console: Console
) -> bool:
    """Run (or resume) the ticket; True once it is resolved, False while it waits."""
    assert settings.postgres_url
    limits = Limits(
        settings.approval_threshold, settings.vip_lifetime_spend, settings.approval_expires_seconds
    )
    bearer = (
        settings.orchestrator_token.get_secret_value()
        if settings.orchestrator_token
        else issue_token(settings, Role.AGENT, ACTOR)
    )
    waiting = False
    async with (
        lease(settings.postgres_url, ticket_id),
        postgres_checkpointer(settings.postgres_url) as saver,
        open_mesh(mesh.servers, bearer) as servers,
    ):
        graph = build_graph(saver)
        run = steps(
            graph,
            ticket_id,
            RunContext(servers, limits, chat_model(settings)),
            resume={"approval_id": resume} if resume else None,
        )
        ran = False
        async for node, written in run:
            ran, waiting = True, waiting or node == "__interrupt__"
            console.print(f"[bold]{node:<17}[/bold] {describe(node, written)}", highlight=False)
        state = await graph.aget_state({"configurable": {"thread_id": str(ticket_id)}})
        if not ran:  # someone (the orchestrator service) already took it this far
            waiting = bool(state.interrupts)
            console.print(
                f"ticket {ticket_id} is already "
                + (
                    f"waiting for approval {state.interrupts[0].value['approval_id']}"
                    if waiting
                    else "resolved"
                ),
                highlight=False,
            )
        if not waiting:
            reply = (state.values.get("reply") or {}).get("text")
            if reply:
                console.print(f"\n{reply}", highlight=False)
    return not waiting
