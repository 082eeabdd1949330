"""The memory server through an MCP client, on real Redis, Qdrant (local mode), PostgreSQL and a
real Celery worker and beat (in the server's process)."""

import asyncio
import time
import uuid
from typing import Any

import mcp.types as mt
import psycopg
from fastmcp import Client
from qdrant_client import models
from redis.asyncio import Redis

from schemas.roles import Role
from servers.memory.server import build_server
from servers.memory.store import COLLECTION
from servers.runtime.settings import Settings
from servers.runtime.vectors import open_vectors
from tests.integration.test_ticketing_tools import Db, call, refused


def customer() -> str:
    return f"cust_{uuid.uuid4().hex[:10]}"


async def test_a_customer_id_holding_a_colon_never_reaches_another_s_session(
    memory: Client[Any],
) -> None:
    """Customer 'A:chat', session '42' once read customer A's session 'chat:42' (and could
    append to it): both ids may hold ':', and the Redis key joined them with ':'."""
    a = customer()
    await call(
        memory,
        "append_session",
        customer_id=a,
        session_id="chat:42",
        speaker="customer",
        text="my card number ends 4242",
    )
    other = await call(memory, "get_session", customer_id=f"{a}:chat", session_id="42")
    assert other["turns"] == [] and other["total_turns"] == 0
    await call(
        memory,
        "append_session",
        customer_id=f"{a}:chat",
        session_id="42",
        speaker="customer",
        text="hello",
    )
    mine = await call(memory, "get_session", customer_id=a, session_id="chat:42")
    assert [t["text"] for t in mine["turns"]] == ["my card number ends 4242"]


async def test_sessions_keep_their_latest_turns_in_order(memory: Client[Any]) -> None:
    who, chat = customer(), "chat-1"
    for i in range(8):
        added = await call(
            memory,
            "append_session",
            customer_id=who,
            session_id=chat,
            speaker="customer",
            text=f"message {i}",
        )
    assert added["total_turns"] == 5  # session_max_turns in the test settings
    assert 0 < added["expires_in_seconds"] <= 7 * 24 * 3600
    session = await call(memory, "get_session", customer_id=who, session_id=chat, last=3)
    assert [t["text"] for t in session["turns"]] == ["message 5", "message 6", "message 7"]
    assert session["total_turns"] == 5
    empty = await call(memory, "get_session", customer_id=who, session_id="other")
    assert (empty["turns"], empty["total_turns"], empty["expires_in_seconds"]) == ([], 0, None)


async def test_sessions_expire_after_their_ttl(memory_settings: Settings) -> None:
    short = memory_settings.model_copy(update={"session_ttl_seconds": 1})
    who = customer()
    async with Client(build_server(short)) as client:
        await call(
            client, "append_session", customer_id=who, session_id="s", speaker="agent", text="hi"
        )
        assert (await call(client, "get_session", customer_id=who, session_id="s"))["turns"]
        await asyncio.sleep(2.2)
        gone = await call(client, "get_session", customer_id=who, session_id="s")
        assert gone["turns"] == [] and gone["expires_in_seconds"] is None


async def test_append_with_the_same_key_adds_one_turn(memory: Client[Any]) -> None:
    who, key = customer(), f"turn-{uuid.uuid4()}"
    turn = {"customer_id": who, "session_id": "s", "speaker": "customer", "text": "Where is it?"}
    first = await call(memory, "append_session", **turn, idempotency_key=key)
    again = await call(memory, "append_session", **turn, idempotency_key=key)
    assert first["total_turns"] == again["total_turns"] == 1
    text = await refused(memory, "append_session", **{**turn, "text": "x"}, idempotency_key=key)
    assert text.startswith("conflict: idempotency_key")


async def remember_all(client: Client[Any], who: str, facts: list[tuple[str, str]]) -> None:
    for text, kind in facts:
        await call(client, "remember", customer_id=who, text=text, kind=kind)


async def test_recall_finds_by_meaning_and_never_crosses_customers(memory: Client[Any]) -> None:
    alice, bob = customer(), customer()
    await remember_all(
        memory,
        alice,
        [
            ("Prefers to be contacted by email, never by phone.", "preference"),
            ("Has a golden retriever called Rex.", "fact"),
            ("Lives in Lisbon and travels for work.", "fact"),
        ],
    )
    await remember_all(
        memory,
        bob,
        [
            ("Wants phone calls only; does not read email.", "preference"),
            ("Allergic to peanuts.", "fact"),
        ],
    )
    hits = (await call(memory, "recall", customer_id=alice, query="how should we reach her?"))[
        "hits"
    ]
    assert hits[0]["memory"]["text"].startswith("Prefers to be contacted by email")
    # Whatever is asked, and however the id is spelt, only that customer's memories come back.
    for query in ("phone calls peanuts", "Wants phone calls only; does not read email."):
        for asked in (alice, f"{alice} OR {bob}", f"{alice}*", alice.upper()):
            found = (await call(memory, "recall", customer_id=asked, query=query, k=50))["hits"]
            assert {h["memory"]["customer_id"] for h in found} <= {asked}
            assert all(h["memory"]["customer_id"] != bob for h in found)
    facts = await call(memory, "recall", customer_id=alice, query="pets", kind="fact")
    assert {h["memory"]["kind"] for h in facts["hits"]} == {"fact"}
    text = await refused(
        memory, "recall", customer_id=alice, query="x", filter={"customer_id": bob}
    )
    assert text == "invalid_argument: filter: not a parameter of this tool"


async def test_list_memories_pages_oldest_first(memory: Client[Any]) -> None:
    who = customer()
    await remember_all(memory, who, [(f"Fact number {i}.", "fact") for i in range(5)])
    seen: list[str] = []
    cursor = None
    while True:
        page = await call(memory, "list_memories", customer_id=who, limit=2, cursor=cursor)
        seen += [m["text"] for m in page["memories"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [f"Fact number {i}." for i in range(5)]
    template = mt.ResourceTemplateReference(
        type="ref/resource", uri="memory://customers/{customer_id}"
    )
    done = await memory.complete(template, {"name": "customer_id", "value": who[:-2]})
    assert who in done.values
    contents = await memory.read_resource(f"memory://customers/{who}")
    assert isinstance(contents[0], mt.TextResourceContents)
    assert "Fact number 4." in contents[0].text
    text = await refused(memory, "list_memories", customer_id=customer(), cursor="bogus")
    assert text.startswith("invalid_argument: cursor")


async def test_forget_customer_erases_every_store_and_returns_a_receipt(
    memory: Client[Any], memory_settings: Settings, db: Db
) -> None:
    gone, kept = customer(), customer()
    for who in (gone, kept):
        await remember_all(memory, who, [("Prefers email.", "preference"), ("Has a cat.", "fact")])
        for chat in ("a", "b"):
            await call(
                memory,
                "append_session",
                customer_id=who,
                session_id=chat,
                speaker="customer",
                text="hello there",
                idempotency_key=f"{who}-{chat}",
            )
    await call(
        memory,
        "remember",
        customer_id=gone,
        text="Likes jazz.",
        kind="preference",
        idempotency_key=f"{gone}-jazz",
    )
    receipt = await call(memory, "forget_customer", customer_id=gone)
    assert {k: receipt[k] for k in receipt if k != "erased_at"} == {
        "customer_id": gone,
        "sessions_removed": 2,
        "turns_removed": 2,
        "memories_removed": 3,
        "vectors_removed": 3,
    }
    # PostgreSQL: no row, no kept result naming the customer (but the erasure's own audit).
    row = await (
        await db.execute(
            "SELECT (SELECT count(*) FROM memory.memories WHERE customer_id = %s),"
            " (SELECT count(*) FROM memory.idempotency_keys WHERE result::text LIKE %s)",
            [gone, f"%{gone}%"],
        )
    ).fetchone()
    assert row == (0, 0)
    # Qdrant: no point.
    vectors = open_vectors(memory_settings)
    only = models.Filter(
        must=[models.FieldCondition(key="customer_id", match=models.MatchValue(value=gone))]
    )
    with vectors.lock:
        assert vectors.client.count(COLLECTION, count_filter=only, exact=True).count == 0
    # Redis: no key and no index entry mentions the customer.
    assert memory_settings.redis_url
    async with Redis.from_url(memory_settings.redis_url, decode_responses=True) as redis:
        assert [k async for k in redis.scan_iter(match=f"*{gone}*")] == []
        for key in [k async for k in redis.scan_iter(match="memory:*:sessions")]:
            assert not [m for m in await redis.zrange(key, 0, -1) if gone in m]
    # Through the tools: nothing left; the other customer untouched.
    assert (await call(memory, "list_memories", customer_id=gone))["memories"] == []
    assert (await call(memory, "recall", customer_id=gone, query="email"))["hits"] == []
    assert (await call(memory, "get_session", customer_id=gone, session_id="a"))["turns"] == []
    assert len((await call(memory, "list_memories", customer_id=kept))["memories"]) == 2
    assert (await call(memory, "get_session", customer_id=kept, session_id="a"))["turns"]


async def test_only_an_admin_may_erase(memory_settings: Settings, memory: Client[Any]) -> None:
    who = customer()
    await call(memory, "remember", customer_id=who, text="Has a cat.", kind="fact")
    agent = memory_settings.model_copy(update={"role": Role.AGENT, "actor": "assistant"})
    async with Client(build_server(agent)) as client:
        text = await refused(client, "forget_customer", customer_id=who)
    assert text == "permission_denied: scope: forget_customer needs the 'admin' scope"
    assert len((await call(memory, "list_memories", customer_id=who))["memories"]) == 1


async def test_an_idle_session_becomes_a_summary_through_the_worker(
    memory: Client[Any], memory_settings: Settings
) -> None:
    who = customer()
    turns = [
        ("customer", "Hi. My blender arrived with a cracked jar."),
        ("agent", "Sorry to hear that. Is the base working?"),
        ("customer", "The base works but the cracked jar leaks everywhere."),
        ("agent", "I have started a replacement jar for you; it ships tomorrow."),
    ]
    for speaker, text in turns:
        await call(
            memory,
            "append_session",
            customer_id=who,
            session_id="chat-9",
            speaker=speaker,
            text=text,
        )
    deadline = time.monotonic() + 30
    while True:  # idle after 2 s; the beat sends the sweep every 0.5 s
        page = await call(memory, "list_memories", customer_id=who, kind="interaction_summary")
        if page["memories"]:
            break
        assert time.monotonic() < deadline, "the idle session was not summarised"
        await asyncio.sleep(0.3)
    [summary] = page["memories"]
    assert summary["source"] == "session:chat-9"
    assert "cracked jar" in summary["text"] and "replacement jar" in summary["text"]
    await asyncio.sleep(2)  # more sweeps: the same session is not summarised again
    page = await call(memory, "list_memories", customer_id=who, kind="interaction_summary")
    assert len(page["memories"]) == 1
    hits = await call(memory, "recall", customer_id=who, query="broken blender")
    assert hits["hits"][0]["memory"]["id"] == summary["id"]
    assert memory_settings.postgres_url
    with psycopg.connect(memory_settings.postgres_url) as conn:
        actor = conn.execute(
            "SELECT actor FROM memory.audit WHERE tool = 'remember' AND result->>'id' = %s",
            [summary["id"]],
        ).fetchone()
    assert actor == ("system:memory-consolidation",)


async def test_bad_input_is_refused_by_field_and_writes_nothing(
    memory: Client[Any], db: Db
) -> None:
    who = customer()
    count = "SELECT count(*) FROM memory.memories"
    before = await (await db.execute(count)).fetchone()
    cases: list[tuple[str, dict[str, Any], str]] = [
        (
            "append_session",
            {"customer_id": who, "session_id": "bad id!", "speaker": "customer", "text": "x"},
            "session_id",
        ),
        (
            "append_session",
            {"customer_id": who, "session_id": "s", "speaker": "robot", "text": "x"},
            "speaker",
        ),
        (
            "append_session",
            {"customer_id": who, "session_id": "s", "speaker": "customer", "text": " "},
            "text",
        ),
        ("get_session", {"customer_id": who, "session_id": "s", "last": 0}, "last"),
        ("remember", {"customer_id": who, "text": "", "kind": "fact"}, "text"),
        ("remember", {"customer_id": who, "text": "x", "kind": "secret"}, "kind"),
        ("remember", {"customer_id": "", "text": "x", "kind": "fact"}, "customer_id"),
        ("recall", {"customer_id": who, "query": ""}, "query"),
        ("recall", {"customer_id": who, "query": "x", "k": 51}, "k"),
        ("recall", {"customer_id": who, "query": "x", "kind": "gossip"}, "kind"),
        ("list_memories", {"customer_id": who, "limit": 0}, "limit"),
        ("list_memories", {"customer_id": who, "kind": "gossip"}, "kind"),
        ("forget_customer", {"customer_id": "  "}, "customer_id"),
    ]
    for tool, arguments, field in cases:
        text = await refused(memory, tool, **arguments)
        assert text.startswith(f"invalid_argument: {field}"), (tool, field, text)
    assert await (await db.execute(count)).fetchone() == before
    assert (await call(memory, "get_session", customer_id=who, session_id="s"))["turns"] == []
