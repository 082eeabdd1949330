"""Tickets through the orchestrator service, against the same graph called in-process.

    python -m bench.orchestrator_service [--tickets 500] [--concurrency 8]

Both passes run on a fresh ``supportmesh up --free-ports`` (embedded backends, the demo store
and knowledge base), with the offline policy, every MCP hop over streamable HTTP and
PostgreSQL checkpoints (``durability="sync"``), on the same tickets (tests/data/tickets.jsonl,
cycled), ``--concurrency`` at a time:

- service: each ticket is created on the ticketing server; the service in ``up`` picks it up
  from Kafka (``customer.requests``, through the ticketing outbox's relay) and runs it. Seconds
  run from create_ticket's return to the run's end in the ``runs`` table (resolved, or paused
  for approval).
- in-process (the baseline): ``up`` with ``SUPPORTMESH_ORCHESTRATOR_CONSUME_TICKETS=false``;
  this process creates each ticket and runs the graph on it itself (``orchestrator.run``).

Prints tickets/s and p50 / p90 seconds per ticket for each, their ratios, where the service's
time goes (the runs' own time against queueing and hand-off), and the checkpoint tables' size
per 1,000 tickets before and after pruning the resolved ones to their last checkpoint.
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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from fastmcp import Client

from bench.orchestrator import quantile
from clients.mesh import Mesh, read_mesh
from orchestrator.graph import RunContext, build_graph
from orchestrator.mesh import open_mesh
from orchestrator.policy import Limits
from orchestrator.run import handle, postgres_checkpointer
from orchestrator.tasks import prune
from schemas.roles import Role
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


async def in_process(
    mesh: Mesh, settings: Settings, tickets: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float]:
    """Seconds per ticket (created to run's end) and wall time, the graph run here."""
    assert settings.postgres_url
    bearer = issue_token(settings, Role.AGENT, "orchestrator")
    slots = asyncio.Semaphore(concurrency)
    times: list[float] = []
    async with (
        Client(mesh.servers["ticketing"], auth=bearer) as ticketing,
        postgres_checkpointer(settings.postgres_url, concurrency + 2) as saver,
        open_mesh(mesh.servers, bearer) as servers,
    ):
        graph = build_graph(saver)
        context = RunContext(servers, Limits())

        async def one(ticket: dict[str, Any]) -> None:
            async with slots:
                ticket_id = await create(ticketing, ticket)
                created = time.perf_counter()
                await handle(graph, ticket_id, context)
                times.append(time.perf_counter() - created)

        began = time.perf_counter()
        await asyncio.gather(*(one(t) for t in tickets))
        return times, time.perf_counter() - began


async def through_service(
    mesh: Mesh, settings: Settings, tickets: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float, list[float]]:
    """Seconds per ticket (created to run's end), wall time, and the runs' own seconds."""
    assert settings.postgres_url
    bearer = issue_token(settings, Role.AGENT, "bench-frontdesk")
    slots = asyncio.Semaphore(concurrency)
    created: dict[int, datetime] = {}
    async with Client(mesh.servers["ticketing"], auth=bearer) as ticketing:

        async def one(ticket: dict[str, Any]) -> None:
            async with slots:
                ticket_id = await create(ticketing, ticket)
                created[ticket_id] = datetime.now().astimezone()

        began = time.perf_counter()
        first = datetime.now().astimezone()
        await asyncio.gather(*(one(t) for t in tickets))
    ends = await settled(settings.postgres_url, list(created))
    last = max(end for end, _ in ends.values())
    wall = max((last - first).total_seconds(), time.perf_counter() - began)
    times = [(ends[t][0] - created[t]).total_seconds() for t in created]
    return times, wall, [run for _, run in ends.values()]


RUN_ENDS = """
    SELECT r.ticket_id, coalesce(r.finished_at, r.updated_at) AS ended,
        (SELECT min((e.event->>'time')::timestamptz) FROM orchestrator.outbox e
         WHERE e.key = 'ticket/' || r.ticket_id AND e.event->>'type' = 'run.started') AS began
    FROM orchestrator.runs r
    WHERE r.ticket_id = ANY(%s) AND r.status IN ('resolved', 'waiting')
"""


async def settled(url: str, ids: list[int]) -> dict[int, tuple[datetime, float]]:
    """Each ticket's run end, and the run's own seconds, once every run has ended."""
    deadline = time.monotonic() + 900
    async with await psycopg.AsyncConnection.connect(url) as conn:
        while True:
            rows = await (await conn.execute(RUN_ENDS, [ids])).fetchall()
            if len(rows) == len(ids):
                return {t: (ended, (ended - began).total_seconds()) for t, ended, began in rows}
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(rows)} of {len(ids)} tickets ended")
            await asyncio.sleep(0.5)


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


async def checkpoint_storage(settings: Settings, tickets: int) -> None:
    assert settings.postgres_url
    before = await table_sizes(settings.postgres_url)
    pruned = await asyncio.to_thread(prune, settings.postgres_url, 0)
    after = await table_sizes(settings.postgres_url)
    print(f"\ncheckpoint tables per 1,000 tickets (pruned {pruned} resolved of {tickets}):")
    print(f"{'table':<20}{'before MB':>11}{'after MB':>10}")
    for table in TABLES:
        scale = 1000 / tickets / 1e6
        print(f"{table:<20}{before[table] * scale:>11.2f}{after[table] * scale:>10.2f}")
    total = (sum(before.values()), sum(after.values()))
    print(
        f"{'all':<20}{total[0] * 1000 / tickets / 1e6:>11.2f}"
        f"{total[1] * 1000 / tickets / 1e6:>10.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent.parent
    parser.add_argument("--tickets", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    labelled = [
        json.loads(row)
        for row in (here / "tests" / "data" / "tickets.jsonl").read_text().splitlines()
        if row.strip()
    ]
    tickets = [labelled[i % len(labelled)] for i in range(args.tickets)]
    concurrency = str(args.concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as workdir:
        off = {
            "SUPPORTMESH_ORCHESTRATOR_CONSUME_TICKETS": "false",
            "SUPPORTMESH_ORCHESTRATOR_CONCURRENCY": concurrency,
        }
        with mesh_up(Path(workdir), "baseline", **off) as (mesh, settings):
            base, base_wall = asyncio.run(in_process(mesh, settings, tickets, args.concurrency))
        on = {"SUPPORTMESH_ORCHESTRATOR_CONCURRENCY": concurrency}
        with mesh_up(Path(workdir), "service", **on) as (mesh, settings):
            served, wall, own = asyncio.run(
                through_service(mesh, settings, tickets, args.concurrency)
            )
            print(
                f"{args.tickets} tickets, {args.concurrency} at a time, offline policy, "
                "HTTP to 5 servers, PostgreSQL checkpoints"
            )
            print(f"{'':<12}{'tickets/s':>11}{'p50 s':>9}{'p90 s':>9}{'max s':>9}")
            print(line("in-process", base, base_wall))
            print(line("service", served, wall))
            print(
                f"service / in-process: throughput {base_wall / wall:.2f}, "
                f"p50 {statistics.median(served) / statistics.median(base):.2f}"
            )
            print(
                f"service, where the time goes (p50): run itself {statistics.median(own):.3f} s, "
                f"create to run start {statistics.median(served) - statistics.median(own):.3f} s"
            )
            asyncio.run(checkpoint_storage(settings, args.tickets))


if __name__ == "__main__":
    main()
