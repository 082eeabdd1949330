"""Knowledge-base search latency against a raw Qdrant query, and ingestion throughput.

    python -m bench.kb_search [--sizes 1000 10000 100000] [--queries 50]

Search: the shared banking articles are chunked and embedded once, then copied up to each size
(1k, 10k, 100k passages) in an in-memory Qdrant (local mode, as a fresh machine runs it). At
each size, ``KnowledgeIndex.search`` (embed the query, dense + lexical prefetch, RRF fusion,
payload) is timed against the baseline: one raw ``query_points`` on the dense vectors with a
ready-made query vector, in the same run on the same collection; and, to show what is ours
and what is Qdrant's, the same fused query sent raw (vectors ready, no hits built). Both query
sets are timed: the short questions (``kb_queries.jsonl``) and customers' whole messages
(``kb_long_queries.jsonl``, 217-1042 words), which hybrid search ranks by their words alone.

Ingestion: the knowledge server (its Celery worker in-process, embedded backends) ingests all
698 articles through its MCP tools; passages per second from the call to the job's end.
"""

import argparse
import asyncio
import json
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fastmcp import Client
from qdrant_client import QdrantClient, models

from schemas.knowledge import SearchFilters, SearchMode
from servers.knowledge.index import CANDIDATES, COLLECTION, FUSION, KnowledgeIndex
from servers.knowledge.server import build_server
from servers.knowledge.text import chunk_article, document_sparse, query_sparse
from servers.runtime.backends import start_backends
from servers.runtime.embeddings import embed, embedding_model
from servers.runtime.settings import Settings
from servers.runtime.vectors import Vectors
from tests.conftest import shared_data_or_exit

ARTICLES = shared_data_or_exit() / "tau2" / "banking_knowledge" / "documents"
QUERIES = Path(__file__).parent / "kb_queries.jsonl"
LONG_QUERIES = Path(__file__).parent / "kb_long_queries.jsonl"
T = TypeVar("T")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


def timed(call: Callable[[T], object], items: list[T]) -> list[float]:
    """Seconds each ``call(item)`` took."""
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - started)
    return times


def real_passages(model: Any) -> list[models.PointStruct]:
    points = []
    for file in sorted(ARTICLES.glob("*.json")):
        doc = json.loads(file.read_text())
        for chunk in chunk_article(doc["content"]):
            indices, values = document_sparse(f"{doc['title']}\n{chunk.text}")
            points.append(
                models.PointStruct(
                    id=0,
                    vector={"lexical": models.SparseVector(indices=indices, values=values)},
                    payload={
                        "article_id": doc["id"],
                        "title": doc["title"],
                        "headings": list(chunk.headings),
                        "text": chunk.text,
                        "chunk": chunk.index,
                        "tags": [],
                        "source": "bench",
                    },
                )
            )
    texts = [f"{p.payload['title']}\n{p.payload['text']}" for p in points if p.payload]
    for point, vector in zip(points, embed(model, texts), strict=True):
        assert isinstance(point.vector, dict)
        point.vector["dense"] = vector
    return points


def raw_hybrid(client: QdrantClient, query: tuple[list[float], str]) -> object:
    """The same fused query as ours, sent as is: no embedding, no hits built."""
    vector, text = query
    indices, values = query_sparse(text)
    return client.query_points(
        COLLECTION,
        prefetch=[
            models.Prefetch(query=vector, using="dense", limit=CANDIDATES),
            models.Prefetch(
                query=models.SparseVector(indices=indices, values=values),
                using="lexical",
                limit=CANDIDATES,
            ),
        ],
        query=FUSION,
        limit=5,
    )


def search_latency(sizes: list[int], queries: list[str], messages: list[str]) -> None:
    model = embedding_model(None)
    passages = real_passages(model)
    query_vectors = embed(model, queries)
    print(
        f"{len(passages)} real passages, copied up to each size; "
        f"{len(queries)} questions, {len(messages)} whole messages\n"
    )
    print(
        f"{'passages':>9}{'search p50':>12}{'p95 ms':>8}"
        f"{'raw p50':>10}{'p95 ms':>8}{'x raw p50':>11}"
        f"{'raw hybrid':>13}{'p95 ms':>8}{'x hybrid':>11}"
        f"{'message p50':>13}{'p95 ms':>8}{'x raw p50':>11}"
    )
    for size in sizes:
        index = KnowledgeIndex(Vectors(QdrantClient(":memory:"), local=True), model)
        index.ensure_collection()
        batch: list[models.PointStruct] = []
        for n in range(size):
            original = passages[n % len(passages)]
            copy = n // len(passages)
            assert original.payload is not None
            batch.append(
                original.model_copy(
                    update={
                        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{n}")),
                        "payload": {
                            **original.payload,
                            "article_id": f"{original.payload['article_id']}~{copy}",
                        },
                    }
                )
            )
            if len(batch) == 1000 or n == size - 1:
                index.vectors.client.upsert(COLLECTION, points=batch, wait=True)
                batch = []
        hybrid = partial(index.search, k=5, filters=SearchFilters(), mode=SearchMode.HYBRID)
        ours = timed(hybrid, queries)
        raw_dense = partial(index.vectors.client.query_points, COLLECTION, using="dense", limit=5)
        raw = timed(raw_dense, query_vectors)
        fused = timed(
            partial(raw_hybrid, index.vectors.client),
            list(zip(query_vectors, queries, strict=True)),
        )
        whole = timed(hybrid, messages)
        (o50, o95), (r50, r95), (f50, f95) = percentiles(ours), percentiles(raw), percentiles(fused)
        m50, m95 = percentiles(whole)
        print(
            f"{size:>9}{o50:>12.1f}{o95:>8.1f}{r50:>10.1f}{r95:>8.1f}{o50 / r50:>11.1f}"
            f"{f50:>13.1f}{f95:>8.1f}{o50 / f50:>11.2f}"
            f"{m50:>13.1f}{m95:>8.1f}{m50 / r50:>11.1f}"
        )


async def ingestion_throughput(settings: Settings) -> None:
    docs = [json.loads(f.read_text()) for f in sorted(ARTICLES.glob("*.json"))]
    articles = [{"id": d["id"], "title": d["title"], "body": d["content"]} for d in docs]
    async with Client(build_server(settings)) as client:
        started = time.perf_counter()
        jobs = []
        for start in range(0, len(articles), 100):
            result = await client.call_tool(
                "ingest_articles", {"articles": articles[start : start + 100], "source": "bench"}
            )
            assert result.structured_content is not None
            jobs.append(result.structured_content["id"])
        for job_id in jobs:
            while True:
                job = (
                    await client.call_tool("get_ingest_job", {"job_id": job_id})
                ).structured_content
                assert job is not None
                if job["status"] != "running":
                    break
                await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
    passages = sum(len(chunk_article(d["content"])) for d in docs)
    print(
        f"\ningestion: {len(articles)} articles, {passages} passages in {elapsed:.1f} s "
        f"= {passages / elapsed:.0f} passages/s (Celery worker, 2 threads, embedded backends)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    sets = [
        [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]
        for path in (QUERIES, LONG_QUERIES)
    ]
    search_latency(args.sizes, sets[0][: args.queries], sets[1][: args.queries])
    workdir = Path(".supportmesh") / "bench-kb"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh Qdrant store: every article is new
    with start_backends(Settings(data_dir=workdir / "data"), durable=False) as settings:
        asyncio.run(ingestion_throughput(settings))


if __name__ == "__main__":
    main()
