"""Tickets through the orchestrator service, against the same graph called in-process.

    python -m bench.orchestrator_service [--tickets 500] [--concurrency 8]

One ``supportmesh up --free-ports`` (embedded backends, the demo store and knowledge base; its
own service set not to start runs), the offline policy, every MCP hop over streamable HTTP,
PostgreSQL checkpoints (``durability="sync"``), the same tickets (tests/data/tickets.jsonl,
cycled) with ``--concurrency`` in flight at a time, the demo store loaded afresh before each
pass. In both passes the graph runs in a process of its own, beside the servers' process:

- in-process (the baseline): this process creates each ticket on the ticketing server and runs
  the graph on it (``orchestrator.run.handle``);
- service: this process creates each ticket on the ticketing server, and a ``supportmesh
  orchestrator`` process picks it up from Kafka (``customer.requests``, through the ticketing
  outbox's relay), runs it, and publishes its progress events; the ticket ends when its row in
  ``runs`` says resolved or waiting for approval.

Seconds per ticket run from create_ticket's return to the run's end. Prints tickets/s and p50 /
p90 for each and their ratios, where the service's time goes (hand-off from create to the run's
start, and the run), and the checkpoint tables' size per 1,000 tickets before and after pruning
the resolved ones to their last checkpoint.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastmcp import Client

from bench.orchestrator import quantile
from clients import demo_data
from clients.crm import load
from clients.mesh import Mesh, read_mesh
from orchestrator.graph import RunContext, build_graph
from orchestrator.mesh import open_mesh
from orchestrator.policy import Limits
from orchestrator.run import handle, postgres_checkpointer
from orchestrator.tasks import prune
from schemas.roles import Role
from servers.crm.retail_format import read_store
from servers.runtime.auth import issue_token
from servers.runtime.settings import Settings

SUPPORTMESH = str(Path(sys.executable).parent / "supportmesh")
TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


@contextmanager
def mesh_up(workdir: Path, name: str, **env: str) -> Iterator[tuple[Mesh, Settings]]:
    data_dir = workdir / name
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    environ |= {"SUPPORTMESH_DATA_DIR": str(data_dir), **env}
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SUPPORTMESH, "up", "--free-ports"], env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 300
        while (mesh := read_mesh(data_dir)) is None or mesh.pid != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"supportmesh up did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        settings = Settings(
            data_dir=data_dir,
            postgres_url=mesh.backends["SUPPORTMESH_POSTGRES_URL"],
            redis_url=mesh.backends["SUPPORTMESH_REDIS_URL"],
        )
        yield mesh, settings
    finally:
        proc.send_signal(2)
        proc.wait(timeout=60)


async def create(ticketing: Client[Any], ticket: dict[str, Any]) -> int:
    arguments = {"subject": ticket["subject"], "description": ticket["message"]}
    if ticket["customer_id"]:
        arguments["customer_id"] = ticket["customer_id"]
    made = await ticketing.call_tool("create_ticket", arguments)
    assert made.structured_content is not None
    return int(made.structured_content["id"])


async def reload_store(settings: Settings) -> None:
    await load(
        settings,
        read_store(demo_data.STORE / "db.json"),
        (demo_data.STORE / "policy.md").read_text(),
    )


async def in_flight(
    tickets: list[dict[str, Any]],
    concurrency: int,
    one: Callable[[dict[str, Any]], Awaitable[float]],
) -> tuple[list[float], float]:
    """``one`` on every ticket, ``concurrency`` at a time: its seconds each, and wall time."""
    slots = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def slot(ticket: dict[str, Any]) -> None:
        async with slots:
            times.append(await one(ticket))

    began = time.perf_counter()
    await asyncio.gather(*(slot(t) for t in tickets))
    return times, time.perf_counter() - began


async def in_process(
    mesh: Mesh, settings: Settings, tickets: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float]:
    """Seconds per ticket (created to run's end) and wall time, the graph run here."""
    assert settings.postgres_url
    await reload_store(settings)
    bearer = issue_token(settings, Role.AGENT, "orchestrator")
    async with (
        Client(mesh.servers["ticketing"], auth=bearer) as ticketing,
        postgres_checkpointer(settings.postgres_url, concurrency + 2) as saver,
        open_mesh(mesh.servers, bearer) as servers,
    ):
        graph = build_graph(saver)
        context = RunContext(servers, Limits())

        async def one(ticket: dict[str, Any]) -> float:
            ticket_id = await create(ticketing, ticket)
            created = time.perf_counter()
            await handle(graph, ticket_id, context)
            return time.perf_counter() - created

        return await in_flight(tickets, concurrency, one)


RUN_ENDS = """
    SELECT r.ticket_id, (SELECT min((e.event->>'time')::timestamptz) FROM orchestrator.outbox e
         WHERE e.key = 'ticket/' || r.ticket_id AND e.event->>'type' = 'run.started') AS began
    FROM orchestrator.runs r
    WHERE r.ticket_id = ANY(%s) AND r.status IN ('resolved', 'waiting')
"""


async def watch_ends(url: str, waiting: dict[int, "asyncio.Future[datetime]"]) -> None:
    """Resolve each waiting ticket's future with its run's start once the run has ended.

    One connection, woken by the service's outbox notifications (a run's end is written with
    its last events), so that waiting adds no load of its own to what is measured."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("LISTEN outbox_orchestrator")
        while True:
            if waiting:
                rows = await (await conn.execute(RUN_ENDS, [list(waiting)])).fetchall()
                for ticket_id, began in rows:
                    waiting.pop(ticket_id).set_result(began)
            async for _ in conn.notifies(timeout=0.1, stop_after=1):
                pass


async def through_service(
    mesh: Mesh, settings: Settings, tickets: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float, list[float]]:
    """Seconds per ticket (created to run's end), wall time, and each hand-off's seconds
    (created to the run's start)."""
    assert settings.postgres_url
    await reload_store(settings)
    bearer = issue_token(settings, Role.AGENT, "bench-frontdesk")
    handoffs: list[float] = []
    waiting: dict[int, asyncio.Future[datetime]] = {}
    watcher = asyncio.create_task(watch_ends(settings.postgres_url, waiting))
    async with Client(mesh.servers["ticketing"], auth=bearer) as ticketing:

        async def one(ticket: dict[str, Any]) -> float:
            ticket_id = await create(ticketing, ticket)
            created = time.perf_counter()
            created_at = datetime.now().astimezone()
            ended = waiting[ticket_id] = asyncio.get_running_loop().create_future()
            began = await asyncio.wait_for(ended, 300)
            handoffs.append((began - created_at).total_seconds())
            return time.perf_counter() - created

        times, wall = await in_flight(tickets, concurrency, one)
    watcher.cancel()
    return times, wall, handoffs


@contextmanager
def service(workdir: Path, mesh: Mesh, concurrency: int) -> Iterator[None]:
    """``supportmesh orchestrator`` on the mesh's backends, until the block exits."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    environ |= mesh.backends | {
        "SUPPORTMESH_MCP_URLS": json.dumps(mesh.servers),
        "SUPPORTMESH_ORCHESTRATOR_GROUP": "bench",
        "SUPPORTMESH_ORCHESTRATOR_OFFSET_RESET": "latest",
        "SUPPORTMESH_ORCHESTRATOR_CONCURRENCY": str(concurrency),
    }
    log = workdir / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SUPPORTMESH, "orchestrator", "--port", "0"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            found = re.search(r"^orchestrator: (http://\S+)$", log.read_text(), re.M)
            if found and httpx.get(f"{found.group(1)}/readyz").status_code == 200:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        proc.send_signal(2)
        proc.wait(timeout=60)


async def table_sizes(url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "VACUUM FULL orchestrator.checkpoints, orchestrator.checkpoint_blobs, "
            "orchestrator.checkpoint_writes"
        )
        sizes = {}
        for table in TABLES:
            row = await (
                await conn.execute("SELECT pg_total_relation_size(%s)", [f"orchestrator.{table}"])
            ).fetchone()
            sizes[table] = int(row[0]) if row else 0
        return sizes


def line(name: str, times: list[float], wall: float) -> str:
    return (
        f"{name:<12}{len(times) / wall:>11.1f}{statistics.median(times):>9.3f}"
        f"{quantile(times, 0.9):>9.3f}{max(times):>9.3f}"
    )


async def checkpoint_storage(settings: Settings, tickets: int, earlier: dict[str, int]) -> None:
    """The service pass's checkpoint tables per 1,000 tickets, before and after pruning
    (``earlier``: the sizes before the pass, the in-process pass's threads, never pruned)."""
    assert settings.postgres_url
    before = await table_sizes(settings.postgres_url)
    pruned = await asyncio.to_thread(prune, settings.postgres_url, 0)
    after = await table_sizes(settings.postgres_url)
    scale = 1000 / tickets / 1e6
    print(f"\ncheckpoint tables per 1,000 tickets (pruned {pruned} resolved of {tickets}):")
    print(f"{'table':<20}{'before MB':>11}{'after MB':>10}")
    for table in [*TABLES, "all"]:
        was = sum(before[t] - earlier[t] for t in TABLES if table in (t, "all"))
        now = sum(after[t] - earlier[t] for t in TABLES if table in (t, "all"))
        print(f"{table:<20}{was * scale:>11.2f}{now * scale:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent.parent
    parser.add_argument("--tickets", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--logs", type=Path, help="Keep the processes' logs here.")
    args = parser.parse_args()
    labelled = [
        json.loads(row)
        for row in (here / "tests" / "data" / "tickets.jsonl").read_text().splitlines()
        if row.strip()
    ]
    tickets = [labelled[i % len(labelled)] for i in range(args.tickets)]
    n = args.concurrency
    with (
        tempfile.TemporaryDirectory(prefix="bench-service-") as tmp,
        mesh_up(
            workdir := args.logs or Path(tmp),
            "mesh",
            SUPPORTMESH_ORCHESTRATOR_CONSUME_TICKETS="false",
        ) as (
            mesh,
            settings,
        ),
    ):
        base, base_wall = asyncio.run(in_process(mesh, settings, tickets, n))
        earlier = asyncio.run(table_sizes(settings.postgres_url or ""))
        with service(workdir, mesh, n):
            served, wall, handoffs = asyncio.run(through_service(mesh, settings, tickets, n))
        print(
            f"{args.tickets} tickets, {n} in flight, offline policy, HTTP to 5 servers, "
            "PostgreSQL checkpoints"
        )
        print(f"{'':<12}{'tickets/s':>11}{'p50 s':>9}{'p90 s':>9}{'max s':>9}")
        print(line("in-process", base, base_wall))
        print(line("service", served, wall))
        print(
            f"service / in-process: throughput {base_wall / wall:.2f}, "
            f"p50 {statistics.median(served) / statistics.median(base):.2f}, "
            f"p90 {quantile(served, 0.9) / quantile(base, 0.9):.2f}"
        )
        print(
            f"service, hand-off (created to run started): p50 {statistics.median(handoffs):.3f} s,"
            f" p90 {quantile(handoffs, 0.9):.3f} s"
        )
        asyncio.run(checkpoint_storage(settings, args.tickets, earlier))


if __name__ == "__main__":
    main()
