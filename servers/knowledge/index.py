"""The knowledge base's chunks in Qdrant: dense and lexical vectors, hybrid search.

One collection, ``kb_chunks``: each point is a chunk with a dense vector (the static model) and
a sparse lexical vector (BM25 weights, IDF applied by Qdrant). Point ids derive from article id,
index key (content hash and ``INDEX_VERSION``) and chunk number, so indexing the same content
twice with the same code writes the same points.
Hybrid search asks both in one query (two prefetches fused by weighted reciprocal rank).
"""

import uuid
from dataclasses import dataclass

from model2vec import StaticModel
from qdrant_client import models

from schemas.knowledge import SearchFilters, SearchHit, SearchMode
from servers.knowledge.text import Chunk, chunk_article, document_sparse, query_sparse, words
from servers.runtime.embeddings import embed
from servers.runtime.keys import joined_key
from servers.runtime.vectors import Vectors, ensure_collection

COLLECTION = "kb_chunks"
CANDIDATES = 50  # per retriever, before fusion
# Reciprocal-rank fusion, lexical weighted above dense: the static model's dense ranking is the
# weaker of the two on our banking query sets (README, "Retrieval quality"), and an equal vote
# let it pull good lexical hits down. k=10 rewards the top of each list more than the usual 60.
FUSION = models.RrfQuery(rrf=models.Rrf(k=10, weights=[0.3, 1.0]))  # [dense, lexical]
# A query of more words than this is a customer's whole message, not a question: the static
# model's average over a whole story points nowhere in particular (dense alone finds 6% of the
# articles needed on our long messages), so hybrid search ranks such a query by its words alone.
LONG_QUERY_WORDS = 40


# How an article becomes points: chunking and vectors. Bump it when either changes. An article
# indexed under another version no longer counts as indexed, so the next ingest re-cuts its
# passages although its text is the same. 2: code blocks no longer split sections. 3: point
# ids made with joined_key (ids holding ':' stay apart), so old points are replaced, not doubled.
# 4: lexical vectors hold pairs of adjacent words too.
INDEX_VERSION = 4


def index_key(content_hash: str) -> str:
    """What an article's points and ``articles.indexed_hash`` carry once this content is indexed
    by this version of the code."""
    return f"{content_hash}:v{INDEX_VERSION}"


def point_id(article_id: str, key: str, index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, joined_key("kb", article_id, key, index)))


def _article_filter(article_id: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="article_id", match=models.MatchValue(value=article_id))]
    )


@dataclass
class KnowledgeIndex:
    vectors: Vectors
    model: StaticModel

    def ensure_collection(self) -> None:
        dense = models.VectorParams(size=self.model.dim, distance=models.Distance.COSINE)
        ensure_collection(
            self.vectors,
            COLLECTION,
            ("article_id", "tags", "source"),
            {"dense": dense},
            {"lexical": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )

    def replace_article(
        self,
        article_id: str,
        title: str,
        body: str,
        tags: list[str],
        source: str,
        key: str,
        first_time: bool = False,
    ) -> int:
        """Make the article's chunks exactly those of this content; returns how many.

        ``key`` is ``index_key`` of the content: chunks carrying another key are removed.

        ``first_time`` (never indexed before) skips looking for old chunks to delete, which
        local mode does by scanning every point.
        """
        chunks = chunk_article(body)
        texts = [self._embedded_text(title, chunk) for chunk in chunks]
        dense = embed(self.model, texts) if texts else []
        points = []
        for chunk, vector in zip(chunks, dense, strict=True):
            indices, values = document_sparse(f"{title}\n{' '.join(chunk.headings)}\n{chunk.text}")
            points.append(
                models.PointStruct(
                    id=point_id(article_id, key, chunk.index),
                    vector={
                        "dense": vector,
                        "lexical": models.SparseVector(indices=indices, values=values),
                    },
                    payload={
                        "article_id": article_id,
                        "index_key": key,
                        "title": title,
                        "headings": list(chunk.headings),
                        "text": chunk.text,
                        "chunk": chunk.index,
                        "tags": tags,
                        "source": source,
                    },
                )
            )
        stale = models.Filter(
            must=[
                models.FieldCondition(key="article_id", match=models.MatchValue(value=article_id))
            ],
            must_not=[models.FieldCondition(key="index_key", match=models.MatchValue(value=key))],
        )
        with self.vectors.lock:
            if points:
                self.vectors.client.upsert(COLLECTION, points=points, wait=True)
            if not first_time:
                self.vectors.client.delete(
                    COLLECTION, points_selector=models.FilterSelector(filter=stale), wait=True
                )
        return len(points)

    @staticmethod
    def _embedded_text(title: str, chunk: Chunk) -> str:
        return " > ".join([title, *chunk.headings]) + "\n" + chunk.text

    def delete_article(self, article_id: str) -> int:
        with self.vectors.lock:
            count = self.vectors.client.count(
                COLLECTION, count_filter=_article_filter(article_id), exact=True
            ).count
            self.vectors.client.delete(
                COLLECTION,
                points_selector=models.FilterSelector(filter=_article_filter(article_id)),
                wait=True,
            )
        return count

    def count(self, article_id: str | None = None) -> int:
        with self.vectors.lock:
            return self.vectors.client.count(
                COLLECTION,
                count_filter=_article_filter(article_id) if article_id else None,
                exact=True,
            ).count

    def search(
        self, query: str, k: int, filters: SearchFilters, mode: SearchMode
    ) -> list[SearchHit]:
        conditions: list[models.Condition] = []
        if filters.tags:
            conditions.append(
                models.FieldCondition(key="tags", match=models.MatchAny(any=filters.tags))
            )
        if filters.source:
            conditions.append(
                models.FieldCondition(key="source", match=models.MatchValue(value=filters.source))
            )
        where = models.Filter(must=conditions) if conditions else None
        if mode is SearchMode.HYBRID and len(words(query)) > LONG_QUERY_WORDS:
            mode = SearchMode.LEXICAL
        indices, values = query_sparse(query)
        lexical = models.SparseVector(indices=indices, values=values)
        # Embedded once, whole, and only when the dense vectors take part.
        dense = embed(self.model, [query])[0] if mode is not SearchMode.LEXICAL else []
        with self.vectors.lock:
            client = self.vectors.client
            if mode is SearchMode.DENSE:
                result = client.query_points(
                    COLLECTION, query=dense, using="dense", query_filter=where, limit=k
                )
            elif mode is SearchMode.LEXICAL:
                result = client.query_points(
                    COLLECTION, query=lexical, using="lexical", query_filter=where, limit=k
                )
            else:
                result = client.query_points(
                    COLLECTION,
                    prefetch=[
                        models.Prefetch(query=dense, using="dense", filter=where, limit=CANDIDATES),
                        models.Prefetch(
                            query=lexical, using="lexical", filter=where, limit=CANDIDATES
                        ),
                    ],
                    query=FUSION,
                    limit=k,
                )
        hits = []
        for point in result.points:
            payload = point.payload or {}
            hits.append(
                SearchHit(
                    article_id=payload["article_id"],
                    title=payload["title"],
                    headings=payload["headings"],
                    text=payload["text"],
                    score=point.score,
                    chunk=payload["chunk"],
                )
            )
        return hits
