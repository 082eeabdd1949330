"""Retrieval quality of the knowledge base: hybrid, dense-only and lexical-only, side by side.

    python -m bench.kb_quality [--queries bench/kb_queries.jsonl] [--articles DIR]

The articles (default: the shared banking knowledge base, 698 articles) are chunked, embedded
and indexed by the knowledge server's own code (``servers/knowledge/index.py``) into an
in-memory Qdrant; each query of the JSONL file (``{"query": …, "relevant": [article ids]}``)
is then searched in the three modes. Passages are folded into a ranking of articles (an
article ranks where its best passage does) and scored with binary relevance: recall@1/5/10,
MRR and nDCG@10.
"""

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

from qdrant_client import QdrantClient

from schemas.knowledge import SearchFilters, SearchMode
from servers.knowledge.index import KnowledgeIndex
from servers.runtime.embeddings import embedding_model
from servers.runtime.vectors import Vectors
from tests.conftest import shared_data_or_exit

PASSAGES = 50  # passages asked for, folded into articles


def article_ranking(index: KnowledgeIndex, query: str, mode: SearchMode) -> list[str]:
    ranking: list[str] = []
    for hit in index.search(query, PASSAGES, SearchFilters(), mode):
        if hit.article_id not in ranking:
            ranking.append(hit.article_id)
    return ranking


def scores(ranking: list[str], relevant: set[str]) -> dict[str, float]:
    first = next((i for i, a in enumerate(ranking) if a in relevant), None)
    dcg = sum(1 / math.log2(i + 2) for i, a in enumerate(ranking[:10]) if a in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return {
        "recall@1": len(relevant & set(ranking[:1])) / len(relevant),
        "recall@5": len(relevant & set(ranking[:5])) / len(relevant),
        "recall@10": len(relevant & set(ranking[:10])) / len(relevant),
        "MRR": 0.0 if first is None else 1 / (first + 1),
        "nDCG@10": dcg / ideal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=Path, default=Path(__file__).parent / "kb_queries.jsonl")
    parser.add_argument(
        "--articles",
        type=Path,
        default=shared_data_or_exit() / "tau2" / "banking_knowledge" / "documents",
    )
    args = parser.parse_args()

    index = KnowledgeIndex(Vectors(QdrantClient(":memory:"), local=True), embedding_model(None))
    index.ensure_collection()
    started, chunks = time.perf_counter(), 0
    for file in sorted(args.articles.glob("*.json")):
        doc = json.loads(file.read_text())
        digest = hashlib.sha256(doc["content"].encode()).hexdigest()
        chunks += index.replace_article(doc["id"], doc["title"], doc["content"], [], "kb", digest)
    print(f"indexed {chunks} passages in {time.perf_counter() - started:.1f} s")

    queries = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    metrics = ["recall@1", "recall@5", "recall@10", "MRR", "nDCG@10"]
    print(f"{len(queries)} queries from {args.queries}\n")
    print(f"{'mode':<10}" + "".join(f"{m:>11}" for m in metrics))
    for mode in SearchMode:
        totals = dict.fromkeys(metrics, 0.0)
        for q in queries:
            for metric, value in scores(
                article_ranking(index, q["query"], mode), set(q["relevant"])
            ).items():
                totals[metric] += value / len(queries)
        print(f"{mode.value:<10}" + "".join(f"{totals[m]:>11.3f}" for m in metrics))


if __name__ == "__main__":
    main()
