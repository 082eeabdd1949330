"""Tickets through the orchestrator, every MCP hop real, PostgreSQL checkpoints against memory.

    python -m bench.orchestrator [--tickets tests/data/tickets.jsonl] [--passes 2]

Starts ``supportmesh up --free-ports`` on a fresh data directory (embedded backends, the demo
store and knowledge base), then runs the labelled tickets through the graph with the offline
policy, over streamable HTTP to the five servers, in passes that alternate the checkpointer:
LangGraph's ``InMemorySaver`` (the baseline) and our ``AsyncPostgresSaver`` on the mesh's
PostgreSQL with ``durability="sync"``. Before each pass the demo store is loaded again, so every
pass meets the same orders in the same states. A ticket that needs approval counts until it
pauses. Prints per saver: p50 / p90 / max seconds per ticket, tickets per second, and the ratio
of PostgreSQL to memory.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from fastmcp import Client
from langgraph.checkpoint.memory import InMemorySaver
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from clients import demo_data
from clients.crm import load
from clients.mesh import Mesh, read_mesh
from orchestrator.graph import RunContext, build_graph
from orchestrator.mesh import ValidatingSession, open_mesh
from orchestrator.policy import Limits
from orchestrator.run import handle, postgres_checkpointer
from schemas.roles import Role
from servers.crm.retail_format import read_store
from servers.runtime.auth import issue_token
from servers.runtime.settings import Settings

SUPPORTMESH = str(Path(sys.executable).parent / "supportmesh")
ORDER = "#W5590865"  # a demo order: get_order's result is a whole order, schema and all
CALLS = 100


def start_up(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], Mesh]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env["SUPPORTMESH_DATA_DIR"] = str(data_dir)
    # The bench runs the graph itself: up's own service must not pick the tickets up too (it
    # would race the bench's run of each ticket).
    env["SUPPORTMESH_ORCHESTRATOR_CONSUME_TICKETS"] = "false"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SUPPORTMESH, "up", "--free-ports"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while (mesh := read_mesh(data_dir)) is None or mesh.pid != proc.pid:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"supportmesh up did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, mesh


async def one_pass(
    settings: Settings, mesh: Mesh, tickets: list[dict[str, Any]], saver_name: str
) -> tuple[list[float], Counter[str]]:
    """Seconds per ticket and how the tickets ended, the demo store loaded afresh first."""
    await load(
        settings,
        read_store(demo_data.STORE / "db.json"),
        (demo_data.STORE / "policy.md").read_text(),
    )
    agent = issue_token(settings, Role.AGENT, "bench-frontdesk")
    ids = []
    async with Client(mesh.servers["ticketing"], auth=agent) as ticketing:
        for ticket in tickets:
            arguments = {"subject": ticket["subject"], "description": ticket["message"]}
            if ticket["customer_id"]:
                arguments["customer_id"] = ticket["customer_id"]
            made = await ticketing.call_tool("create_ticket", arguments)
            assert made.structured_content is not None
            ids.append(int(made.structured_content["id"]))
    bearer = issue_token(settings, Role.AGENT, "orchestrator")
    times = []
    ended = Counter[str]()
    assert settings.postgres_url
    async with (
        postgres_checkpointer(settings.postgres_url) as postgres,
        open_mesh(mesh.servers, bearer) as servers,
    ):
        graph = build_graph(postgres if saver_name == "postgres" else InMemorySaver())
        context = RunContext(servers, Limits())
        for ticket_id in ids:
            started = time.perf_counter()
            state = await handle(graph, ticket_id, context)
            times.append(time.perf_counter() - started)
            if "__interrupt__" in state:
                ended["paused for approval"] += 1
            elif state.get("outcome"):
                ended[f"action {state['outcome']['status']}"] += 1
            else:
                ended["no action"] += 1
    return times, ended


async def calls_per_second(url: str, bearer: str, session_class: type[ClientSession]) -> float:
    """``get_order`` calls a second through one session of ``session_class``."""
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        session_class(read, write) as session,
    ):
        await session.initialize()
        await session.call_tool("get_order", {"order_id": ORDER})  # warm: schemas listed
        started = time.perf_counter()
        for _ in range(CALLS):
            await session.call_tool("get_order", {"order_id": ORDER})
        return CALLS / (time.perf_counter() - started)


async def validation_cost(settings: Settings, mesh: Mesh) -> None:
    """The MCP SDK's client checks every tool result against the tool's output schema, building
    a validator each time; ours keeps one per tool. Same server, same call, same run."""
    bearer = issue_token(settings, Role.AGENT, "bench-validation")
    rates: dict[str, list[float]] = {"SDK ClientSession": [], "ValidatingSession": []}
    for _ in range(3):
        rates["SDK ClientSession"].append(
            await calls_per_second(mesh.servers["crm"], bearer, ClientSession)
        )
        rates["ValidatingSession"].append(
            await calls_per_second(mesh.servers["crm"], bearer, ValidatingSession)
        )
    best = {name: max(r) for name, r in rates.items()}
    print(f"\nget_order over HTTP, {CALLS} calls x 3, best run:")
    for name, rate in best.items():
        print(f"{name:<20}{rate:>8.0f} calls/s")
    print(f"ValidatingSession / SDK: {best['ValidatingSession'] / best['SDK ClientSession']:.2f}")


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(mesh: Mesh, tickets: list[dict[str, Any]], passes: int, data_dir: Path) -> None:
    settings = Settings(
        data_dir=data_dir,
        postgres_url=mesh.backends["SUPPORTMESH_POSTGRES_URL"],
        redis_url=mesh.backends["SUPPORTMESH_REDIS_URL"],
    )
    results: dict[str, list[float]] = {"memory": [], "postgres": []}
    ended = Counter[str]()
    for n in range(passes):
        for saver in ("memory", "postgres") if n % 2 == 0 else ("postgres", "memory"):
            times, how = await one_pass(settings, mesh, tickets, saver)
            results[saver] += times
            ended += how
    print("how the tickets ended, all passes:", dict(sorted(ended.items())))
    print(
        f"\n{len(tickets)} tickets x {passes} passes per saver, offline policy, HTTP to 5 servers"
    )
    print(f"{'saver':<10}{'p50 s':>9}{'p90 s':>9}{'max s':>9}{'tickets/s':>11}")
    for saver, times in results.items():
        print(
            f"{saver:<10}{statistics.median(times):>9.3f}{quantile(times, 0.9):>9.3f}"
            f"{max(times):>9.3f}{len(times) / sum(times):>11.1f}"
        )
    ratio = statistics.median(results["postgres"]) / statistics.median(results["memory"])
    print(f"postgres / memory, p50: {ratio:.2f}")
    await validation_cost(settings, mesh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent.parent
    parser.add_argument("--tickets", type=Path, default=here / "tests" / "data" / "tickets.jsonl")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    tickets = [json.loads(line) for line in args.tickets.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-orchestrator-") as workdir:
        data_dir = Path(workdir) / "data"
        proc, mesh = start_up(data_dir, Path(workdir) / "up.log")
        try:
            asyncio.run(bench(mesh, tickets, args.passes, data_dir))
        finally:
            proc.send_signal(2)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
