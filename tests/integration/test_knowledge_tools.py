"""The knowledge server through an MCP client: ingestion by a real Celery worker, Qdrant
(local mode) search, deletion, re-ingestion, and refusals that write nothing."""

import asyncio
import json
import uuid
from typing import Any

import psycopg
from fastmcp import Client
from qdrant_client import models

from servers.knowledge.index import COLLECTION
from servers.knowledge.server import MAX_QUERY
from servers.knowledge.tasks import resend_stale_now
from servers.runtime.settings import Settings
from servers.runtime.vectors import open_vectors
from tests.conftest import require_shared_data
from tests.integration.test_ticketing_tools import call, refused

Db = psycopg.AsyncConnection[Any]


def article(id: str, title: str, body: str, tags: list[str] | None = None) -> dict[str, Any]:
    return {"id": id, "title": title, "body": body, "tags": tags or []}


def banking(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Shared banking articles, as ingest_articles takes them (skips the test without them)."""
    documents = require_shared_data() / "tau2" / "banking_knowledge" / "documents"
    files = sorted(documents.glob("*.json"))[start : start + count]
    docs = [json.loads(f.read_text()) for f in files]
    return [article(d["id"], d["title"], d["content"], ["banking"]) for d in docs]


async def ingest(client: Client[Any], articles: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """Ingest and wait until the job is finished; return the finished job."""
    job = await call(client, "ingest_articles", articles=articles, **kw)
    for _ in range(600):
        if job["status"] != "running":
            return job
        await asyncio.sleep(0.1)
        job = await call(client, "get_ingest_job", job_id=job["id"])
    raise AssertionError(f"job still running: {job}")


async def search(client: Client[Any], query: str, **kw: Any) -> list[dict[str, Any]]:
    return (await call(client, "search_articles", query=query, **kw))["hits"]  # type: ignore[no-any-return]


async def snapshot(db: Db) -> tuple[Any, ...]:
    cur = await db.execute(
        "SELECT (SELECT count(*) FROM knowledge.articles),"
        " (SELECT count(*) FROM knowledge.ingest_jobs),"
        " (SELECT count(*) FROM knowledge.ingest_items), (SELECT count(*) FROM knowledge.audit)"
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def test_ingested_articles_are_found_by_paraphrase(knowledge: Client[Any]) -> None:
    articles = banking(40)
    job = await ingest(knowledge, articles, source="banking-kb")
    assert (job["status"], job["indexed"], job["failed"]) == ("done", 40, 0)
    titles = {a["id"]: a["title"] for a in articles}
    target = next(a for a in articles if "Opening Personal Checking" in a["title"])
    hits = await search(knowledge, "am I eligible to open another checking account", k=3)
    assert target["id"] in [h["article_id"] for h in hits], [titles[h["article_id"]] for h in hits]
    hit = next(h for h in hits if h["article_id"] == target["id"])
    assert hit["headings"] and hit["text"] and hit["title"] == target["title"]


async def test_products_whose_names_share_words_are_not_confused(knowledge: Client[Any]) -> None:
    """'Light Blue' is not 'Sky Blue', and 'Gold' is not 'Gold Plus', even where the wrong
    article holds more of the query's single words: pairs of words count."""
    await ingest(
        knowledge,
        [
            article("kb-names-light-blue", "Light Blue Account", "## Fees\nNo monthly fee."),
            article(
                "kb-names-sky-blue",
                "Sky Blue Account",
                "## Fees\nFees are light: a light monthly fee, lighter with a light balance.",
            ),
            article("kb-names-gold", "Gold Account", "## Rates\nThe Gold Account earns 2%."),
            article(
                "kb-names-gold-plus",
                "Gold Plus Account",
                "## Rates\nOur gold standard account: the Gold Plus account earns gold-level "
                "rates on every account balance.",
            ),
        ],
        source="names",
    )
    for query, expected in [
        ("what fees are there on a light blue account", "kb-names-light-blue"),
        ("what rate does my gold account earn", "kb-names-gold"),
        ("what rate does the gold plus account earn", "kb-names-gold-plus"),
    ]:
        hits = await search(knowledge, query, filters={"source": "names"}, k=4, mode="lexical")
        assert hits[0]["article_id"] == expected, (query, [h["article_id"] for h in hits])


async def test_a_customer_s_whole_message_is_a_query(knowledge: Client[Any]) -> None:
    """A message of thousands of characters is searched, ranked by the topic it keeps coming
    back to rather than the words of its story; past the documented limit it is refused."""
    await ingest(
        knowledge,
        [
            article(
                "kb-long-wire",
                "Wire transfers",
                "## Limits\nA wire transfer over the "
                "daily limit is held for review; call us to release a held wire.",
            ),
            article(
                "kb-long-dogs",
                "Pet insurance",
                "## Dogs\nOur partner insures dogs, walks and vet visits.",
            ),
        ],
        source="long",
    )
    garden = " ".join(f"On day {i} we talked about the garden." for i in range(80))
    message = (
        f"Hello, I took my dog to the vet last week. {garden} Anyway: my wire transfer to my "
        "landlord is held. Why is the wire held, and how do I release a held wire transfer "
        f"before the rent is late? {garden} Thanks."
    )
    assert 5_000 < len(message) <= MAX_QUERY
    hits = await search(knowledge, message, filters={"source": "long"}, k=2)
    assert hits[0]["article_id"] == "kb-long-wire", [h["article_id"] for h in hits]
    too_long = await refused(knowledge, "search_articles", query="x" * (MAX_QUERY + 1))
    assert too_long == f"invalid_argument: query: String should have at most {MAX_QUERY} characters"


async def test_filters_narrow_results(knowledge: Client[Any]) -> None:
    await ingest(
        knowledge,
        [
            article(
                "kb-returns-1",
                "Returning an item",
                "## How\nStart a return within 30 days.",
                ["retail"],
            ),
            article(
                "kb-returns-2",
                "Returns for gift cards",
                "## Gift cards\nGift cards cannot be returned.",
                ["gift"],
            ),
        ],
        source="help-center",
    )
    hits = await search(knowledge, "return an item", filters={"tags": ["gift"]})
    assert {h["article_id"] for h in hits} == {"kb-returns-2"}
    hits = await search(knowledge, "return an item", filters={"source": "help-center"}, k=10)
    assert {h["article_id"] for h in hits} == {"kb-returns-1", "kb-returns-2"}


def points_of(settings: Settings, article_id: str) -> list[str]:
    """The ids of an article's points in Qdrant (the server's own client in this process)."""
    vectors = open_vectors(settings)
    with vectors.lock:
        points, _ = vectors.client.scroll(
            COLLECTION,
            scroll_filter=models.Filter(
                must=[
                    models.FieldCondition(
                        key="article_id", match=models.MatchValue(value=article_id)
                    )
                ]
            ),
            limit=1000,
        )
    return sorted(str(p.id) for p in points)


async def test_reingest_unchanged_is_a_no_op_and_changed_replaces(
    knowledge: Client[Any], settings: Settings
) -> None:
    doc = article("kb-reingest", "Shipping times", "## Standard\nStandard shipping takes 5 days.")
    first = await ingest(knowledge, [doc])
    assert first["indexed"] == 1
    points = points_of(settings, "kb-reingest")
    again = await ingest(knowledge, [doc])
    assert (again["unchanged"], again["indexed"]) == (1, 0)
    assert points_of(settings, "kb-reingest") == points  # no new vectors
    changed = {**doc, "body": "## Express\nExpress shipping takes 1 day.\n## Standard\nFive days."}
    await ingest(knowledge, [changed])
    hits = await search(knowledge, "how long does express shipping take", k=10)
    texts = [h["text"] for h in hits if h["article_id"] == "kb-reingest"]
    assert any("Express shipping takes 1 day." in t for t in texts)
    assert not any("Standard shipping takes 5 days." in t for t in texts)  # old chunks gone
    assert len(points_of(settings, "kb-reingest")) == 2
    assert not set(points_of(settings, "kb-reingest")) & set(points)
    got = await call(knowledge, "get_article", article_id="kb-reingest")
    assert got["version"] == 2


async def test_reingest_recuts_an_article_indexed_by_an_older_chunker(
    knowledge: Client[Any], settings: Settings, db: Db
) -> None:
    body = "## Reset\nRun this:\n```\n# stop the agent first\npinctl reset\n```\n"
    doc = article("kb-recut", "PIN reset", body)
    assert (await ingest(knowledge, [doc]))["indexed"] == 1
    # What version 1 of the index left: indexed_hash was the bare content hash, and its points
    # carried that hash (here one more point, cut where version 1 cut: at the code's '#').
    await db.execute(
        "UPDATE knowledge.articles SET indexed_hash = content_hash WHERE id = 'kb-recut'"
    )
    vectors = open_vectors(settings)
    this_article = models.FieldCondition(
        key="article_id", match=models.MatchValue(value="kb-recut")
    )
    with vectors.lock:
        (point,), _ = vectors.client.scroll(
            COLLECTION, scroll_filter=models.Filter(must=[this_article]), with_vectors=True
        )
        old = models.PointStruct(
            id=str(uuid.uuid4()),
            vector=point.vector,
            payload={**(point.payload or {}), "headings": ["stop the agent first"], "chunk": 1},
        )
        del old.payload["index_key"]  # type: ignore[union-attr]
        vectors.client.upsert(COLLECTION, points=[old], wait=True)
    assert len(points_of(settings, "kb-recut")) == 2

    again = await ingest(knowledge, [doc])
    assert (again["indexed"], again["unchanged"]) == (1, 0)  # same text, re-cut all the same
    assert points_of(settings, "kb-recut") == [str(point.id)]  # the old cut's point is gone
    hits = await search(knowledge, "pinctl reset", k=5)
    assert [h["headings"] for h in hits if h["article_id"] == "kb-recut"] == [["Reset"]]
    third = await ingest(knowledge, [doc])
    assert (third["indexed"], third["unchanged"]) == (0, 1)


async def test_list_articles_pages_by_id_within_its_filters(knowledge: Client[Any]) -> None:
    source = f"pages-{uuid.uuid4().hex[:8]}"
    docs = [article(f"kb-page-{i}", f"Page {i}", f"Body {i}.") for i in range(3)]
    await ingest(knowledge, docs, source=source)
    seen, cursor = [], None
    while True:
        page = await call(knowledge, "list_articles", source=source, limit=2, cursor=cursor)
        seen += [a["id"] for a in page["articles"]]
        if (cursor := page["next_cursor"]) is None:
            break
        other = await refused(knowledge, "list_articles", source="elsewhere", cursor=cursor)
        assert other == "invalid_argument: cursor: belongs to a query with other filters"
    assert seen == ["kb-page-0", "kb-page-1", "kb-page-2"]
    bogus = await refused(knowledge, "list_articles", cursor="bogus")
    assert bogus == "invalid_argument: cursor: not a cursor returned by list_articles"


async def test_delete_removes_from_search_and_database(knowledge: Client[Any], db: Db) -> None:
    await ingest(
        knowledge, [article("kb-delete-me", "Lost parcels", "## Claims\nFile a lost parcel claim.")]
    )
    assert any(
        h["article_id"] == "kb-delete-me" for h in await search(knowledge, "lost parcel claim")
    )
    deleted = await call(knowledge, "delete_article", article_id="kb-delete-me")
    assert deleted["chunks_removed"] >= 1
    assert not any(
        h["article_id"] == "kb-delete-me"
        for h in await search(knowledge, "lost parcel claim", k=50)
    )
    assert (await refused(knowledge, "get_article", article_id="kb-delete-me")).startswith(
        "not_found:"
    )
    message = await refused(knowledge, "delete_article", article_id="kb-delete-me")
    assert message == "not_found: article_id: no article kb-delete-me"


async def test_bad_input_is_refused_and_writes_nothing(knowledge: Client[Any], db: Db) -> None:
    before = await snapshot(db)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("search_articles", {"query": "   "}, "invalid_argument: query:"),
        ("search_articles", {"query": "fees", "k": 0}, "invalid_argument: k:"),
        ("search_articles", {"query": "fees", "k": 51}, "invalid_argument: k:"),
        (
            "search_articles",
            {"query": "fees", "filters": {"colour": "red"}},
            "invalid_argument: filters.colour:",
        ),
        (
            "ingest_articles",
            {"articles": [{"id": "x", "body": "no title"}]},
            "invalid_argument: articles.0.title:",
        ),
        ("ingest_articles", {"articles": []}, "invalid_argument: articles:"),
        (
            "ingest_articles",
            {"articles": [article("dup", "A", "a"), article("dup", "B", "b")]},
            "invalid_argument: articles:",
        ),
        ("get_ingest_job", {"job_id": "not-a-job"}, "invalid_argument: job_id:"),
        ("get_ingest_job", {"job_id": str(uuid.uuid4())}, "not_found: job_id:"),
    ]
    for tool, arguments, expected in cases:
        message = await refused(knowledge, tool, **arguments)
        assert message.startswith(expected), (tool, arguments, message)
    assert await snapshot(db) == before


async def test_resource_and_prompt(knowledge: Client[Any]) -> None:
    await ingest(
        knowledge,
        [article("kb-prompt", "Card activation", "## Steps\nCall the number on the sticker.")],
    )
    contents = await knowledge.read_resource("kb://articles/kb-prompt")
    assert contents[0].text.startswith("# Card activation")  # type: ignore[union-attr]
    prompt = await knowledge.get_prompt(
        "answer-with-citations",
        {"question": "which number on the sticker do I call for card activation"},
    )
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "[kb-prompt]" in text


async def test_an_item_lost_on_the_way_to_the_worker_is_sent_again(
    knowledge: Client[Any], db: Db
) -> None:
    """As if the broker had been down when the job was made: nothing was queued."""
    await ingest(knowledge, [article("kb-lost", "Wire cut-off", "## Times\nWires sent by 4 pm.")])
    job_id = str(uuid.uuid4())
    await db.execute("UPDATE knowledge.articles SET indexed_hash = NULL WHERE id = 'kb-lost'")
    await db.execute(
        "INSERT INTO knowledge.ingest_jobs (id, source, total, unchanged) VALUES (%s, 'api', 1, 0)",
        [job_id],
    )
    await db.execute(
        """INSERT INTO knowledge.ingest_items (job_id, article_id, content_hash, queued_at)
           SELECT %s, id, content_hash, now() - interval '1 hour'
           FROM knowledge.articles WHERE id = 'kb-lost'""",
        [job_id],
    )
    for _ in range(100):
        job = await call(knowledge, "get_ingest_job", job_id=job_id)
        if job["status"] != "running":
            break
        await asyncio.sleep(0.1)
    assert (job["status"], job["indexed"]) == ("done", 1)


async def test_an_ingest_whose_task_was_lost_is_sent_again_and_finishes(
    knowledge: Client[Any], db: Db, settings: Settings
) -> None:
    doc = article("kb-lost-task", "Gift wrapping", "Gift wrapping costs 5 dollars per item.")
    job = await ingest(knowledge, [doc])
    # As if the broker had lost the task: the item waits, sent long ago, the article unindexed.
    await db.execute(
        "UPDATE knowledge.ingest_items SET state = 'pending', finished_at = NULL, "
        "sent_at = now() - interval '60 days' WHERE job_id = %s",
        [job["id"]],
    )
    await db.execute("UPDATE knowledge.articles SET indexed_hash = NULL WHERE id = %s", [doc["id"]])
    assert (await call(knowledge, "get_ingest_job", job_id=job["id"]))["status"] == "running"
    assert await asyncio.to_thread(resend_stale_now) == 1
    for _ in range(200):
        job = await call(knowledge, "get_ingest_job", job_id=job["id"])
        if job["status"] != "running":
            break
        await asyncio.sleep(0.1)
    assert (job["status"], job["indexed"]) == ("done", 1)
    assert await asyncio.to_thread(resend_stale_now) == 0  # nothing stale is left
