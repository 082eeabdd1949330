"""Tool-call throughput and latency over streamable HTTP, as ratios to a bare FastMCP echo tool.

Each server runs in its own process, served the same way (uvicorn, stateless streamable HTTP,
JSON responses); one client process drives each in turn with the same concurrency and counts.

    python -m bench.tool_calls [--calls 1000] [--concurrency 8] [--rounds 5]

Backends come from ``SUPPORTMESH_*`` settings, or start embedded.
"""

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from servers.runtime.backends import free_port, start_backends
from servers.runtime.settings import Settings
from tests.conftest import SUPPORTMESH, running, supportmesh_env

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def measure(
    url: str, tool: str, arguments: Callable[[int], dict[str, Any]], calls: int, concurrency: int
) -> dict[str, float]:
    """Call ``tool`` ``calls`` times from ``concurrency`` workers; throughput and latencies."""
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
            response = await http.post(url, json=body, headers=HEADERS)
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


def report(rounds: list[dict[str, dict[str, float]]], baseline: str) -> str:
    """Medians over the rounds; the ratio is of median throughputs."""
    names = list(rounds[0])
    median = {
        n: {k: statistics.median(r[n][k] for r in rounds) for k in rounds[0][n]} for n in names
    }
    base = median[baseline]["calls_per_s"]
    lines = [f"{'tool':<16}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x echo (calls/s)':>18}"]
    for name, r in median.items():
        lines.append(
            f"{name:<16}{r['calls_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['calls_per_s'] / base:>18.2f}"
        )
    ratios = [r["get_ticket"]["calls_per_s"] / r[baseline]["calls_per_s"] for r in rounds]
    lines.append(f"get_ticket / echo per round: {', '.join(f'{x:.2f}' for x in ratios)}")
    return "\n".join(lines)


async def run(settings: Settings, workdir: Path, calls: int, concurrency: int, rounds: int) -> None:
    echo_port, ticket_port = free_port(), free_port()
    env = supportmesh_env(settings)
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
    echo_url = f"http://127.0.0.1:{echo_port}/mcp"
    ticket_url = f"http://127.0.0.1:{ticket_port}/mcp"
    results: list[dict[str, dict[str, float]]] = []
    with echo, ticketing:
        # Both servers stay up; the tools take turns, round after round, so that drift in the
        # machine's speed falls on all of them alike.
        for _ in range(rounds):
            results.append(
                {
                    "echo (baseline)": await measure(
                        echo_url, "echo_text", lambda i: {"text": f"hello {i}"}, calls, concurrency
                    ),
                    "create_ticket": await measure(
                        ticket_url,
                        "create_ticket",
                        lambda i: {
                            "subject": f"Bench ticket {i}",
                            "description": "Parcel damaged.",
                            "priority": "normal",
                            "tags": ["bench"],
                        },
                        calls,
                        concurrency,
                    ),
                    "get_ticket": await measure(
                        ticket_url,
                        "get_ticket",
                        lambda i: {"ticket_id": 1 + i % 500},
                        calls,
                        concurrency,
                    ),
                }
            )
    print(
        f"{rounds} rounds of {calls} calls a tool, {concurrency} concurrent, "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}"
    )
    print(report(results, "echo (baseline)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(".supportmesh") / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    with start_backends(Settings(data_dir=workdir / "data"), durable=False) as settings:
        asyncio.run(run(settings, workdir, args.calls, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
