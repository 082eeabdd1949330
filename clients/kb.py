"""What ``supportmesh kb`` does: read article files, ingest them over MCP with a progress bar,
print cited search hits. It talks to the knowledge server only through MCP tools."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.exceptions import ToolError
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clients.demo_data import DemoData
from schemas.knowledge import NewArticle

BATCH = 100  # articles per ingest_articles call, at most
BATCH_BYTES = 4 * 1024 * 1024  # and at most this much JSON, well inside a server's message limit
STALL_SECONDS = 600  # give up when no article moves for this long


class ArticleFileError(ValueError):
    """A file that cannot become an article, or two files that would be the same article."""


def _record(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArticleFileError(f"{file}: not UTF-8 text") from exc
    if file.suffix == ".json":
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise ArticleFileError(f"{file}: not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise ArticleFileError(f"{file}: not a JSON object {{id, title, content}}")
        return {
            "id": record.get("id"),
            "title": record.get("title"),
            "body": record.get("body", record.get("content")),
            "tags": record.get("tags", []),
        }
    first, _, rest = text.partition("\n")
    titled = first.startswith("# ")
    return {
        "id": file.stem,
        "title": first[2:].strip() if titled else file.stem,
        "body": rest if titled else text,
        "tags": [],
    }


def read_articles(path: Path) -> list[dict[str, Any]]:
    """Articles from ``path``: a ``.json`` record ({id, title, content or body}), a ``.md`` file
    (id = file name, title = its first '# ' heading), or a folder of either.

    Every file is checked against the article schema first, and two files giving one id are
    refused, so that nothing is sent when the folder has a problem: ``ArticleFileError`` names
    the file(s).
    """
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".json", ".md"))
        if path.is_dir()
        else [path]
    )
    articles: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for file in files:
        record = _record(file)
        try:
            article = NewArticle.model_validate(record)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = ".".join(str(part) for part in error["loc"])
            raise ArticleFileError(f"{file}: {field}: {error['msg']}") from exc
        if article.id in seen:
            raise ArticleFileError(
                f"{seen[article.id]} and {file} are both article '{article.id}'; "
                "rename one (a .md file's id is its file name)"
            )
        seen[article.id] = file
        articles.append(record)
    return articles


def batches(articles: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Articles in calls of at most ``BATCH`` articles and about ``BATCH_BYTES`` of JSON (an
    article larger than that goes alone)."""
    found: list[list[dict[str, Any]]] = [[]]
    size = 0
    for article in articles:
        length = len(json.dumps(article).encode())
        if found[-1] and (len(found[-1]) == BATCH or size + length > BATCH_BYTES):
            found.append([])
            size = 0
        found[-1].append(article)
        size += length
    return [batch for batch in found if batch]


async def ingest_with_progress(
    client: Client[Any], articles: list[dict[str, Any]], source: str, console: Console
) -> dict[str, int]:
    """Ingest in batches, then follow every job to its end; the totals of all jobs."""
    totals = {"indexed": 0, "unchanged": 0, "failed": 0}
    jobs: list[str] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        sending = progress.add_task("stored ", total=len(articles))
        indexing = progress.add_task("indexed", total=len(articles))
        for batch in batches(articles):
            result = await client.call_tool(
                "ingest_articles", {"articles": batch, "source": source}, raise_on_error=True
            )
            assert result.structured_content is not None
            jobs.append(result.structured_content["id"])
            progress.advance(sending, len(batch))
        finished: dict[str, dict[str, Any]] = {}
        last_progress, last_done = time.monotonic(), -1
        while len(finished) < len(jobs):
            done = 0
            for job_id in jobs:
                job = finished.get(job_id)
                if job is None:
                    result = await client.call_tool("get_ingest_job", {"job_id": job_id})
                    job = result.structured_content
                    assert job is not None
                    if job["status"] != "running":
                        finished[job_id] = job
                done += job["indexed"] + job["unchanged"] + job["failed"]
            progress.update(indexing, completed=done)
            if done != last_done:
                last_progress, last_done = time.monotonic(), done
            elif time.monotonic() - last_progress > STALL_SECONDS:
                raise SystemExit(
                    f"no progress for {STALL_SECONDS} s; is a worker running? jobs: {jobs}"
                )
            if len(finished) < len(jobs):
                await asyncio.sleep(0.2)
    for job in finished.values():
        for key in totals:
            totals[key] += job[key]
        for error in job["errors"]:
            console.print(f"[red]failed[/red] {error}")
    return totals


async def search(client: Client[Any], query: str, k: int, mode: str) -> list[dict[str, Any]]:
    try:
        result = await client.call_tool(
            "search_articles", {"query": query, "k": k, "mode": mode}, raise_on_error=True
        )
    except ToolError as exc:
        raise SystemExit(str(exc)) from exc
    assert result.structured_content is not None
    hits: list[dict[str, Any]] = result.structured_content["hits"]
    return hits


def print_hits(console: Console, hits: list[dict[str, Any]]) -> None:
    for rank, hit in enumerate(hits, 1):
        where = " > ".join([hit["title"], *hit["headings"]])
        console.print(
            f"[bold]{rank}.[/bold] {hit['score']:.3f}  [cyan]{hit['article_id']}[/cyan]  {where}"
        )
        snippet = " ".join(hit["text"].split())
        console.print(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}", highlight=False)


async def load_demo_articles(client: Client[Any], console: Console, data: DemoData) -> None:
    """A demo set's knowledge base, if the knowledge server holds no article yet."""
    page = await client.call_tool("list_articles", {"limit": 1})
    if page.structured_content and page.structured_content["articles"]:
        return
    articles = [article for folder in data.articles for article in read_articles(folder)]
    totals = await ingest_with_progress(client, articles, data.name, console)
    console.print(
        f"Loaded the {data.name} knowledge base ({', '.join(map(str, data.articles))}): "
        f"{totals['indexed']} articles.",
        highlight=False,
    )
