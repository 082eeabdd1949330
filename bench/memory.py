"""Memory server: session reads and recall against raw Redis and raw Qdrant, and Redis memory
per 10,000 concurrent sessions.

Each operation is measured three ways in the same run, in alternating rounds:

- the MCP tool (``get_session`` / ``recall``) through an in-memory MCP client;
- our store call alone (``Sessions.read`` / ``store.recall``), without MCP;
- the raw baseline: a Redis ``GET`` of a value the size of the session / a Qdrant
  ``query_points`` with a ready vector and the same customer filter.

    python -m bench.memory [--calls 2000] [--rounds 3] [--sessions 10000]

Backends start embedded (or come from ``SUPPORTMESH_*`` settings).
"""

import argparse
import asyncio
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastmcp import Client
from qdrant_client import models
from redis.asyncio import Redis

from schemas.memory import Speaker
from servers.memory import store
from servers.memory.server import build_server
from servers.memory.store import COLLECTION
from servers.memory.tasks import sessions_of
from servers.runtime.backends import start_backends
from servers.runtime.database import open_pool
from servers.runtime.embeddings import embed, embedding_model
from servers.runtime.settings import Settings
from servers.runtime.vectors import open_vectors

TURN = "I ordered the blue kettle two weeks ago and it still has not arrived, can you check?"


async def timed(call: Callable[[int], Awaitable[Any]], calls: int) -> list[float]:
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - started)
    return latencies


def p(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(settings: Settings, calls: int, rounds: int, sessions: int) -> None:
    assert settings.redis_url and settings.postgres_url
    server = build_server(settings)
    customers = [f"bench_{i:05d}" for i in range(200)]
    async with Client(server) as client:
        for c in customers:
            for _ in range(10):
                await client.call_tool(
                    "append_session",
                    {"customer_id": c, "session_id": "chat", "speaker": "customer", "text": TURN},
                )
            for m in range(20):
                await client.call_tool(
                    "remember",
                    {"customer_id": c, "text": f"{TURN} (memory {m} of {c})", "kind": "fact"},
                )
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        sessions_store = sessions_of(settings, redis)
        # The raw baseline reads one value as large as a whole stored session.
        stored = await redis.lrange(sessions_store.turns_key(customers[0], "chat"), 0, -1)  # type: ignore[misc]
        await redis.set("bench:raw-session", "[" + ",".join(stored) + "]")
        pool = await open_pool(settings.postgres_url, "memory")
        long_term = store.LongTermMemory(
            pool, open_vectors(settings), embedding_model(settings.embedding_model)
        )
        vector = embed(long_term.model, ["late delivery of a kettle"])[0]

        def raw_qdrant(customer: str) -> Any:
            only = models.Filter(
                must=[
                    models.FieldCondition(
                        key="customer_id", match=models.MatchValue(value=customer)
                    )
                ]
            )
            with long_term.vectors.lock:
                return long_term.vectors.client.query_points(
                    COLLECTION, query=vector, query_filter=only, limit=5
                )

        plan: dict[str, Callable[[int], Awaitable[Any]]] = {
            "redis GET (raw)": lambda i: redis.get("bench:raw-session"),
            "Sessions.read": lambda i: sessions_store.read(customers[i % 200], "chat", 20),
            "get_session (MCP)": lambda i: client.call_tool(
                "get_session", {"customer_id": customers[i % 200], "session_id": "chat"}
            ),
            "qdrant query (raw)": lambda i: asyncio.to_thread(raw_qdrant, customers[i % 200]),
            "store.recall": lambda i: store.recall(
                long_term, customers[i % 200], "late delivery of a kettle", 5, None
            ),
            "recall (MCP)": lambda i: client.call_tool(
                "recall", {"customer_id": customers[i % 200], "query": "late delivery of a kettle"}
            ),
        }
        measured: dict[str, list[float]] = {name: [] for name in plan}
        for _ in range(rounds):
            for name, call in plan.items():
                measured[name] += await timed(call, calls)

        # Redis memory per 10,000 concurrent sessions of 10 turns each.
        before = (await redis.info("memory"))["used_memory"]
        for i in range(sessions):
            for _ in range(10):
                await sessions_store.append(
                    f"load_{i % 2000}", f"s{i}", Speaker.CUSTOMER, TURN, None, "d"
                )
        after = (await redis.info("memory"))["used_memory"]
        await pool.close()
        await redis.aclose()

    print(
        f"{rounds} rounds of {calls} sequential calls each; {platform.machine()}, "
        f"CPython {platform.python_version()}"
    )
    print(f"{'operation':<22}{'p50 ms':>9}{'p99 ms':>9}{'x raw p50':>11}")
    for index, (name, latencies) in enumerate(measured.items()):
        raw = "redis GET (raw)" if index < 3 else "qdrant query (raw)"
        ratio = p(latencies, 0.5) / p(measured[raw], 0.5)
        print(f"{name:<22}{p(latencies, 0.5):>9.3f}{p(latencies, 0.99):>9.3f}{ratio:>11.2f}")
    per = (after - before) / sessions
    print(
        f"Redis memory for {sessions} sessions x 10 turns ({len(TURN)}-character turns): "
        f"{(after - before) / 2**20:.1f} MiB, {per / 1024:.2f} KiB a session, "
        f"{per * 10_000 / 2**20:.1f} MiB per 10,000 sessions"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    workdir = Path(".supportmesh") / "bench-memory"
    with start_backends(Settings(data_dir=workdir / "data"), durable=False) as settings:
        asyncio.run(run(settings, args.calls, args.rounds, args.sessions))


if __name__ == "__main__":
    main()
