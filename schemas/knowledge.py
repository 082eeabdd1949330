"""Knowledge-base contracts: articles, ingestion jobs, cited search hits (DESIGN §2)."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_BODY = 200_000

ArticleId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\s/]+$"),
    Field(description="Article id, e.g. 'doc_bank_accounts_001' (no spaces or slashes)."),
]
KbTag = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        min_length=1,
        max_length=50,
        pattern=r"^[a-z0-9_\-:.]+$",
    ),
]
Source = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="Where articles come from, e.g. 'banking-kb' or 'help-center'."),
]


class NewArticle(BaseModel):
    """An article to store: markdown body with headings."""

    model_config = ConfigDict(extra="forbid")

    id: ArticleId
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    body: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_BODY),
        Field(description="Markdown; '#' headings become the citation path of each chunk."),
    ]
    tags: list[KbTag] = Field(default_factory=list, max_length=20)


class Article(BaseModel):
    id: str
    title: str
    body: str
    tags: list[str]
    source: str
    content_hash: str
    version: int = Field(description="1 when first stored, +1 on each change of content.")
    created_at: datetime
    updated_at: datetime


class ArticleSummary(BaseModel):
    id: str
    title: str
    tags: list[str]
    source: str
    version: int
    updated_at: datetime


class ArticlePage(BaseModel):
    articles: list[ArticleSummary]
    next_cursor: str | None = Field(None, description="Pass back to get the next page.")


class JobStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # finished, some articles could not be indexed


class IngestJob(BaseModel):
    """Progress of one ingest_articles call: each article is indexed by a background task."""

    id: str
    status: JobStatus
    source: str
    total: int = Field(description="Articles in the call.")
    unchanged: int = Field(description="Already stored with the same content: nothing to do.")
    indexed: int = Field(description="Articles whose chunks are now searchable.")
    failed: int
    errors: list[str] = Field(description="'article id: reason' for each failure.")
    created_at: datetime
    finished_at: datetime | None


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    DENSE = "dense"
    LEXICAL = "lexical"


class SearchFilters(BaseModel):
    """Narrow a search; an article matches when it has any of `tags` and (if given) `source`."""

    model_config = ConfigDict(extra="forbid")

    tags: list[KbTag] | None = Field(None, max_length=20)
    source: Source | None = None


class SearchHit(BaseModel):
    """One cited passage: quote `text`, cite `article_id` / `title` / `headings`."""

    article_id: str
    title: str
    headings: list[str] = Field(description="Section path inside the article.")
    text: str
    score: float
    chunk: int = Field(description="Position of the passage in the article.")


class SearchResults(BaseModel):
    query: str
    mode: SearchMode
    hits: list[SearchHit]


class DeletedArticle(BaseModel):
    id: str
    chunks_removed: int
