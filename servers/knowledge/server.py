"""The knowledge MCP server: articles in PostgreSQL, their chunks in Qdrant, cited search.

``ingest_articles`` stores articles and returns a job at once; Celery tasks (``tasks.py``) chunk,
embed and index them, and ``get_ingest_job`` reports progress. ``search_articles`` is hybrid
retrieval (dense + BM25-style lexical, fused) returning passages to cite. With Qdrant in local
mode (no ``SUPPORTMESH_QDRANT_URL``), only this process may open the store, so the server runs
the Celery worker for its tasks itself, in threads.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from fastmcp.prompts import Message
from mcp.types import ToolAnnotations
from pydantic import Field, StrictInt, StringConstraints

from schemas.common import IdempotencyKey
from schemas.knowledge import (
    Article,
    ArticleId,
    ArticlePage,
    DeletedArticle,
    IngestJob,
    JobStatus,
    KbTag,
    NewArticle,
    SearchFilters,
    SearchMode,
    SearchResults,
    Source,
)
from servers.knowledge import store
from servers.knowledge.index import KnowledgeIndex
from servers.knowledge.tasks import index_article, schedule
from servers.runtime.auth import Caller, current_caller
from servers.runtime.database import Pool, values_starting_with
from servers.runtime.embeddings import embedding_model
from servers.runtime.events import schema_with_outbox
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings
from servers.runtime.tasks import beat_in_thread, configure_tasks, worker_in_thread
from servers.runtime.vectors import open_vectors

log = logging.getLogger(__name__)
NAME = "knowledge"
MIGRATIONS = Path(__file__).parent / "migrations"
INSTRUCTIONS = """\
The support knowledge base. Answer from it: search_articles returns passages with the article
id, title and section to cite; read a whole article with get_article. Add or update articles
with ingest_articles (they become searchable once get_ingest_job reports them indexed) and
remove one with delete_article. Cite the articles you use; say so when nothing relevant is
found rather than guessing."""

READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
WRITE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False
)
DELETE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False
)
MAX_QUERY = 20_000  # characters: a customer's whole message, with room to spare
Query = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY),
    Field(
        description="The question, or the customer's whole message as they wrote it (up to "
        f"{MAX_QUERY} characters): the words they repeat count for more."
    ),
]


@dataclass
class Knowledge:
    pool: Pool
    index: KnowledgeIndex
    settings: Settings

    def caller(self, ctx: Context) -> Caller:
        return current_caller(ctx, self.settings)


def _kb(ctx: Context) -> Knowledge:
    kb: Knowledge = ctx.lifespan_context  # type: ignore[assignment]
    return kb


def _send(pending: list[store.ToIndex]) -> None:
    for item in pending:
        index_article.delay(item.job_id, item.article_id, item.content_hash)


async def ingest_articles(
    articles: Annotated[
        list[NewArticle],
        Field(min_length=1, max_length=1000, description="Articles to add or update."),
    ],
    ctx: Context,
    source: Source = "api",
    idempotency_key: IdempotencyKey | None = None,
) -> IngestJob:
    """Add or update knowledge-base articles (admin role); returns a job at once, indexing
    runs behind it.

    Each article has an `id` (stable: the same id updates the article), a `title`, a markdown
    `body` whose headings become the sections hits cite, and optional `tags`. An article sent
    again unchanged is not indexed again; a changed one replaces its old passages. Poll
    get_ingest_job with the returned `id` until its status is 'done' (or 'failed').
    """
    kb = _kb(ctx)
    job, pending = await store.store_articles(
        kb.pool, kb.caller(ctx), articles, source, idempotency_key
    )
    try:
        await asyncio.to_thread(_send, pending)
    except Exception:  # the broker is down: stored, and get_ingest_job sends them again
        log.warning("could not queue the indexing of job %s", job.id, exc_info=True)
    return job


async def get_ingest_job(
    job_id: Annotated[str, Field(max_length=100, description="The id ingest_articles returned.")],
    ctx: Context,
) -> IngestJob:
    """Progress of an ingestion: articles indexed, unchanged and failed (with reasons)."""
    kb = _kb(ctx)
    job = await store.get_job(kb.pool, job_id)
    if job.status is JobStatus.RUNNING:
        # Articles waiting far longer than a redelivery takes were lost on the way (the broker
        # was down when they were sent, say): send them again; indexing twice is harmless.
        wait = 2 * kb.settings.task_visibility_timeout_seconds
        if stalled := await store.stalled_items(kb.pool, job.id, wait):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_send, stalled)
    return job


async def search_articles(
    query: Query,
    ctx: Context,
    k: Annotated[StrictInt, Field(ge=1, le=50, description="How many passages to return.")] = 5,
    filters: Annotated[
        SearchFilters | None, Field(description="Only articles with any of these tags / source.")
    ] = None,
    mode: Annotated[
        SearchMode,
        Field(
            description="hybrid (default, best on short questions and whole messages alike), "
            "or dense / lexical alone for comparison."
        ),
    ] = SearchMode.HYBRID,
) -> SearchResults:
    """Find the knowledge-base passages that answer a question, best first.

    Pass a short question or the customer's whole message: a long message is ranked by its
    words, weighted by how often it uses them, and product names are matched as phrases ("Sky
    Blue" is not "Light Blue"). Returns up to `k` passages, each with the article id, title,
    section path (`headings`) and text to quote and cite. Hybrid search combines meaning (so
    paraphrases match) with exact words (so product names and codes match).
    """
    kb = _kb(ctx)
    hits = await asyncio.to_thread(kb.index.search, query, k, filters or SearchFilters(), mode)
    return SearchResults(query=query, mode=mode, hits=hits)


async def get_article(article_id: ArticleId, ctx: Context) -> Article:
    """One whole article: title, markdown body, tags, source and version."""
    return await store.get_article(_kb(ctx).pool, article_id)


async def list_articles(
    ctx: Context,
    source: Source | None = None,
    tag: KbTag | None = None,
    limit: Annotated[StrictInt, Field(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Field(max_length=500)] = None,
) -> ArticlePage:
    """Articles by id, optionally of one source or tag; pass `next_cursor` back for more."""
    return await store.list_articles(_kb(ctx).pool, source, tag, limit, cursor)


async def delete_article(
    article_id: ArticleId, ctx: Context, idempotency_key: IdempotencyKey | None = None
) -> DeletedArticle:
    """Remove an article and all its passages from search, for good (admin role)."""
    kb = _kb(ctx)

    async def remove_chunks(article_id: str) -> int:
        return await asyncio.to_thread(kb.index.delete_article, article_id)

    return await store.delete_article(
        kb.pool, kb.caller(ctx), article_id, remove_chunks, idempotency_key
    )


async def article_resource(article_id: str, ctx: Context) -> str:
    """An article as markdown, with its title as the first heading."""
    article = await store.get_article(_kb(ctx).pool, article_id)
    return f"# {article.title}\n\n{article.body}"


async def answer_with_citations(question: str, ctx: Context) -> list[Message]:
    """Answer a customer's question from the knowledge base, citing the articles used.

    Args:
        question: The customer's question, in their words.
    """
    kb = _kb(ctx)
    hits = await asyncio.to_thread(kb.index.search, question, 6, SearchFilters(), SearchMode.HYBRID)
    passages = [
        {
            "cite": f"[{hit.article_id}]",
            "title": hit.title,
            "section": " > ".join(hit.headings),
            "text": hit.text,
        }
        for hit in hits
    ]
    return [
        Message(
            "Answer the customer's question using only the passages below. After each "
            "sentence that uses a passage, put its cite tag, e.g. [doc_id]. If the passages "
            "do not answer the question, say that you do not know and suggest a human agent.\n\n"
            f"Question: {question}\n\nPassages:\n{json.dumps(passages, indent=1)}"
        )
    ]


async def complete_article_id(
    kb: Knowledge, ref: str, argument: str, prefix: str, _others: dict[str, str]
) -> list[str]:
    """Article ids starting with what was typed."""
    if argument != "article_id" or ref != "kb://articles/{article_id}":
        return []
    return await values_starting_with(
        kb.pool,
        "SELECT id FROM articles WHERE id LIKE %s ORDER BY id LIMIT 101",
        prefix,
    )


def build_server(settings: Settings) -> FastMCP[Any]:
    """The knowledge server, on the backends named in ``settings`` (all URLs set)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[Knowledge]:
        configure_tasks(settings)
        vectors = open_vectors(settings)
        index = KnowledgeIndex(vectors, embedding_model(settings.embedding_model))
        await asyncio.to_thread(index.ensure_collection)
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(schema_with_outbox(settings, NAME, MIGRATIONS))
            if vectors.local:  # nobody else can write this store: work its tasks here
                stack.enter_context(worker_in_thread(settings, NAME, required=True))
            stack.enter_context(beat_in_thread(settings, NAME, schedule(settings)))
            yield Knowledge(pool=pool, index=index, settings=settings)

    server = new_server(
        NAME,
        INSTRUCTIONS,
        lifespan,
        settings,
        complete_article_id,
        scopes={"ingest_articles": "admin", "delete_article": "admin"},
    )
    server.tool(annotations=WRITE)(ingest_articles)
    server.tool(annotations=READ)(get_ingest_job)
    server.tool(annotations=READ)(search_articles)
    server.tool(annotations=READ)(get_article)
    server.tool(annotations=READ)(list_articles)
    server.tool(annotations=DELETE)(delete_article)
    server.resource("kb://articles/{article_id}", name="article", mime_type="text/markdown")(
        article_resource
    )
    server.prompt(name="answer-with-citations")(answer_with_citations)
    return server
