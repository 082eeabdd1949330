"""Tool-call throughput and latency over streamable HTTP, as ratios to a bare FastMCP echo tool.

Ticketing's get_ticket and create_ticket, and the CRM's get_order and find_customer (by
email) on the shared retail store (``../shared/data/tau2/retail``, loaded first).

Each server runs in its own process, served the same way (uvicorn, stateless streamable HTTP,
JSON responses); one client process drives each in turn with the same concurrency and counts.

    python -m bench.tool_calls [--calls 1000] [--concurrency 8] [--rounds 9]

Backends come from ``SUPPORTMESH_*`` settings, or start embedded.
"""

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from schemas.roles import Role
from servers.runtime.auth import issue_token
from servers.runtime.backends import free_port, start_backends
from servers.runtime.settings import Settings
from tests.conftest import SUPPORTMESH, running, shared_data_or_exit, supportmesh_env

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def measure(
    url: str,
    tool: str,
    arguments: Callable[[int], dict[str, Any]],
    calls: int,
    concurrency: int,
    bearer: str,
) -> dict[str, float]:
    """Call ``tool`` ``calls`` times from ``concurrency`` workers; throughput and latencies.

    Every request carries the bearer token (the echo server ignores it; ours verify it).
    """
    headers = HEADERS | {"authorization": f"Bearer {bearer}"}
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker(http: httpx.AsyncClient) -> None:
        for i in counter:
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments(i)},
            }
            started = time.perf_counter()
            response = await http.post(url, json=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            result = response.json()["result"]
            assert not result.get("isError"), result

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        warm = iter(range(min(200, calls)))
        counter, real = warm, counter
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        latencies.clear()
        counter = real
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls_per_s": calls / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def serving_stack() -> str:
    """The event loop and HTTP parser uvicorn serves with here, the same for every server."""
    found = []
    for name in ("uvloop", "httptools"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)


def echo_arguments(i: int) -> dict[str, Any]:
    return {"text": f"hello {i}"}


def report(rounds: list[dict[str, tuple[dict[str, float], dict[str, float]]]]) -> str:
    """Medians over the rounds. A tool's ratio is the median over rounds of its throughput
    over that of the echo run paired with it (measured right before or after it)."""
    names = list(rounds[0])
    echo_runs = [pair[1] for r in rounds for pair in r.values()]
    keys = list(echo_runs[0])
    table = {"echo (baseline)": {k: statistics.median(e[k] for e in echo_runs) for k in keys}}
    ratios = {n: [r[n][0]["calls_per_s"] / r[n][1]["calls_per_s"] for r in rounds] for n in names}
    for n in names:
        table[n] = {k: statistics.median(r[n][0][k] for r in rounds) for k in keys}
    lines = [f"{'tool':<16}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x echo (calls/s)':>18}"]
    for name, r in table.items():
        ratio = statistics.median(ratios[name]) if name in ratios else 1.0
        lines.append(
            f"{name:<16}{r['calls_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{ratio:>18.2f}"
        )
    for name in names:
        lines.append(f"{name} / echo per round: {', '.join(f'{x:.2f}' for x in ratios[name])}")
    return "\n".join(lines)


async def run(settings: Settings, workdir: Path, calls: int, concurrency: int, rounds: int) -> None:
    echo_port, ticket_port = free_port(), free_port()
    env = supportmesh_env(settings)
    bearer = issue_token(settings, Role.AGENT, "bench")
    echo = running(
        [sys.executable, "-m", "bench.echo_server", str(echo_port)],
        env,
        f"http://127.0.0.1:{echo_port}/mcp",
        workdir / "echo.log",
        ok=(405,),
    )
    ticketing = running(
        [SUPPORTMESH, "serve", "ticketing", "--transport", "http", "--port", str(ticket_port)],
        env,
        f"http://127.0.0.1:{ticket_port}/readyz",
        workdir / "ticketing.log",
    )
    retail = shared_data_or_exit() / "tau2" / "retail"
    subprocess.run([SUPPORTMESH, "crm", "load", str(retail)], env=env, check=True)  # noqa: ASYNC221
    customers = json.loads((retail / "db.json").read_text())["users"]
    emails = [c["email"] for c in customers.values()]
    order_ids = [o for c in customers.values() for o in c["orders"]]
    crm_port = free_port()
    crm = running(
        [SUPPORTMESH, "serve", "crm", "--transport", "http", "--port", str(crm_port)],
        env,
        f"http://127.0.0.1:{crm_port}/readyz",
        workdir / "crm.log",
    )
    echo_url = f"http://127.0.0.1:{echo_port}/mcp"
    ticket_url = f"http://127.0.0.1:{ticket_port}/mcp"
    crm_url = f"http://127.0.0.1:{crm_port}/mcp"
    results: list[dict[str, tuple[dict[str, float], dict[str, float]]]] = []
    with echo, ticketing, crm:
        # Both servers stay up; the tools take turns, round after round, so that drift in the
        # machine's speed falls on all of them alike.
        # (name, server, tool, arguments of the i-th call), measured in this order each round
        plan: list[tuple[str, str, str, Callable[[int], dict[str, Any]]]] = [
            (
                "create_ticket",
                ticket_url,
                "create_ticket",
                lambda i: {
                    "subject": f"Bench ticket {i}",
                    "description": "Parcel damaged.",
                    "priority": "normal",
                    "tags": ["bench"],
                },
            ),
            ("get_ticket", ticket_url, "get_ticket", lambda i: {"ticket_id": 1 + i % 500}),
            (
                "get_order",
                crm_url,
                "get_order",
                lambda i: {"order_id": order_ids[i % len(order_ids)]},
            ),
            (
                "find_customer",
                crm_url,
                "find_customer",
                lambda i: {"email": emails[i % len(emails)]},
            ),
        ]
        for round_number in range(rounds):
            # Each tool is paired with an echo run next to it, echo first in even rounds and
            # second in odd ones, so that the VM's drift falls on both sides of every ratio.
            paired: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
            for name, url, tool, arguments in plan:
                runs = [(url, tool, arguments), (echo_url, "echo_text", echo_arguments)]
                if round_number % 2 == 0:
                    runs.reverse()
                measured = [await measure(*run, calls, concurrency, bearer) for run in runs]
                if round_number % 2 == 0:
                    measured.reverse()
                paired[name] = (measured[0], measured[1])
            results.append(paired)
    print(
        f"{rounds} rounds of {calls} calls a tool, {concurrency} concurrent, "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}; every server on {serving_stack()}"
    )
    print(report(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    workdir = Path(".supportmesh") / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    with start_backends(Settings(data_dir=workdir / "data"), durable=False) as settings:
        asyncio.run(run(settings, workdir, args.calls, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
