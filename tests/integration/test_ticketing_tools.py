"""Every ticketing tool through an MCP client, on real PostgreSQL.

Happy paths, then bad input: each refusal is a tool error naming code and field, and the
database is byte-for-byte what it was before.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import mcp.types as mt
import psycopg
import pytest
from fastmcp import Client

from servers.runtime.settings import Settings
from tests.conftest import read_events

Db = psycopg.AsyncConnection[Any]
# What a write creates, per table (the relay later stamps outbox.sent_at on its own).
TABLES = {
    "tickets": "t::text",
    "comments": "t::text",
    "status_history": "t::text",
    "outbox": "(t.id, t.topic, t.key, t.event)::text",
    "audit": "t::text",
    "idempotency_keys": "t::text",
}


async def call(client: Client[Any], tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client[Any], tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert result.is_error, f"{tool} accepted {arguments}"
    text = result.content[0]
    assert isinstance(text, mt.TextContent)
    return text.text


async def snapshot(db: Db) -> dict[str, str | None]:
    """A digest of every row of every ticketing table."""
    digests = {}
    for table, row_text in TABLES.items():
        cur = await db.execute(
            f"SELECT md5(string_agg({row_text}, ',' ORDER BY {row_text})) FROM ticketing.{table} t"
        )
        row = await cur.fetchone()
        digests[table] = row[0] if row else None
    return digests


async def new_ticket(client: Client[Any], **overrides: Any) -> dict[str, Any]:
    arguments = {
        "subject": "Card declined at checkout",
        "description": "My Visa card is declined when I pay for order #W2378156.",
        **overrides,
    }
    return await call(client, "create_ticket", **arguments)


# --- happy paths ------------------------------------------------------------------------------


async def test_create_ticket_starts_new_with_sla_clocks(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(
        ticketing,
        priority="urgent",
        customer_id="mia_garcia_4516",
        requester_email="mia@example.com",
        tags=["Billing", "card"],
    )
    assert ticket["status"] == "new"
    assert ticket["tags"] == ["billing", "card"]
    created = datetime.fromisoformat(ticket["created_at"])
    due = datetime.fromisoformat(ticket["sla"]["first_response"]["due_at"])
    assert due - created == timedelta(hours=1)
    assert ticket["sla"]["resolution"]["state"] == "running"
    assert ticket["history"][0]["to_status"] == "new"


async def test_get_ticket_returns_comments_and_history(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing)
    await call(ticketing, "add_comment", ticket_id=ticket["id"], body="Checked the gateway log.")
    got = await call(ticketing, "get_ticket", ticket_id=ticket["id"])
    assert got["subject"] == ticket["subject"]
    assert [c["body"] for c in got["comments"]] == ["Checked the gateway log."]
    assert got["comments"][0]["public"] is False


async def test_first_public_reply_meets_first_response(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing)
    await call(ticketing, "add_comment", ticket_id=ticket["id"], body="internal", public=False)
    assert (await call(ticketing, "get_ticket", ticket_id=ticket["id"]))[
        "first_responded_at"
    ] is None
    await call(ticketing, "add_comment", ticket_id=ticket["id"], body="Hi Mia, ...", public=True)
    got = await call(ticketing, "get_ticket", ticket_id=ticket["id"])
    assert got["sla"]["first_response"]["state"] == "met"


async def test_update_ticket_moves_through_the_lifecycle(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing)
    tid = ticket["id"]
    opened = await call(
        ticketing,
        "update_ticket",
        ticket_id=tid,
        status="open",
        assignee="ann",
        priority="high",
        add_tags=["vip"],
    )
    assert (opened["status"], opened["assignee"], opened["priority"]) == ("open", "ann", "high")
    assert opened["tags"] == ["vip"]
    pending = await call(
        ticketing,
        "update_ticket",
        ticket_id=tid,
        status="pending",
        unassign=True,
        remove_tags=["vip"],
    )
    assert (pending["status"], pending["assignee"], pending["tags"]) == ("pending", None, [])
    solved = await call(ticketing, "update_ticket", ticket_id=tid, status="solved")
    assert solved["solved_at"] is not None
    reopened = await call(ticketing, "update_ticket", ticket_id=tid, status="open")
    assert reopened["solved_at"] is None
    assert [h["to_status"] for h in reopened["history"]] == [
        "new",
        "open",
        "pending",
        "solved",
        "open",
    ]


async def test_close_ticket_solves_then_closes(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing)
    closed = await call(ticketing, "close_ticket", ticket_id=ticket["id"])
    assert closed["status"] == "closed"
    assert [h["to_status"] for h in closed["history"]] == ["new", "solved", "closed"]
    assert closed["sla"]["resolution"]["state"] == "met"


async def test_priority_change_moves_due_times(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing, priority="low")
    raised = await call(ticketing, "update_ticket", ticket_id=ticket["id"], priority="urgent")
    created = datetime.fromisoformat(raised["created_at"])
    assert datetime.fromisoformat(raised["sla"]["first_response"]["due_at"]) - created == (
        timedelta(hours=1)
    )


async def test_breach_shows_on_read(ticketing: Client[Any], db: Db) -> None:
    ticket = await new_ticket(ticketing, priority="urgent")
    await db.execute(
        "UPDATE ticketing.tickets SET created_at = now() - interval '2 hours' WHERE id = %s",
        [ticket["id"]],
    )
    got = await call(ticketing, "get_ticket", ticket_id=ticket["id"])
    assert got["sla"]["first_response"]["state"] == "breached"
    assert got["sla"]["resolution"]["state"] == "running"


async def test_every_write_is_audited(ticketing: Client[Any], db: Db) -> None:
    ticket = await new_ticket(ticketing)
    await call(ticketing, "update_ticket", ticket_id=ticket["id"], status="open")
    cur = await db.execute(
        "SELECT actor, tool FROM ticketing.audit WHERE subject = %s ORDER BY id",
        [f"ticket/{ticket['id']}"],
    )
    assert await cur.fetchall() == [
        ("local-user", "create_ticket"),
        ("local-user", "update_ticket"),
    ]


# --- idempotency ------------------------------------------------------------------------------


async def test_same_idempotency_key_creates_one_ticket(ticketing: Client[Any], db: Db) -> None:
    key = f"create-{uuid.uuid4()}"
    first = await new_ticket(ticketing, idempotency_key=key)
    before = await snapshot(db)
    again = await new_ticket(ticketing, idempotency_key=key)
    assert again["id"] == first["id"]
    assert await snapshot(db) == before


async def test_reused_key_with_other_arguments_is_a_conflict(
    ticketing: Client[Any], db: Db
) -> None:
    key = f"create-{uuid.uuid4()}"
    await new_ticket(ticketing, idempotency_key=key)
    before = await snapshot(db)
    text = await refused(
        ticketing, "create_ticket", subject="Another", description="x", idempotency_key=key
    )
    assert text.startswith("conflict: idempotency_key: ")
    assert await snapshot(db) == before


async def test_repeated_comment_with_key_is_added_once(ticketing: Client[Any], db: Db) -> None:
    ticket = await new_ticket(ticketing)
    for _ in range(3):
        await call(
            ticketing,
            "add_comment",
            ticket_id=ticket["id"],
            body="Refund issued.",
            public=True,
            idempotency_key=f"reply-{ticket['id']}",
        )
    assert len((await call(ticketing, "get_ticket", ticket_id=ticket["id"]))["comments"]) == 1


# --- search -----------------------------------------------------------------------------------


async def test_search_finds_by_words_and_filters(ticketing: Client[Any]) -> None:
    marker = uuid.uuid4().hex[:8]
    refund = await new_ticket(
        ticketing,
        subject=f"Refund for broken blender {marker}",
        priority="high",
        customer_id=f"cust_{marker}",
        tags=["refund"],
    )
    await new_ticket(ticketing, subject=f"Password reset {marker}", customer_id=f"cust_{marker}")
    page = await call(ticketing, "search_tickets", text=f"blender {marker}")
    assert [t["id"] for t in page["tickets"]] == [refund["id"]]
    page = await call(ticketing, "search_tickets", customer_id=f"cust_{marker}", priority=["high"])
    assert [t["id"] for t in page["tickets"]] == [refund["id"]]
    page = await call(ticketing, "search_tickets", customer_id=f"cust_{marker}", tag="refund")
    assert [t["id"] for t in page["tickets"]] == [refund["id"]]
    page = await call(ticketing, "search_tickets", customer_id=f"cust_{marker}", status=["open"])
    assert page["tickets"] == []


async def test_search_by_assignee_and_date_range(ticketing: Client[Any]) -> None:
    marker = uuid.uuid4().hex[:8]
    ticket = await new_ticket(ticketing, assignee=f"agent_{marker}")
    now = datetime.now(UTC)
    page = await call(
        ticketing,
        "search_tickets",
        assignee=f"agent_{marker}",
        created_after=(now - timedelta(minutes=5)).isoformat(),
    )
    assert [t["id"] for t in page["tickets"]] == [ticket["id"]]
    page = await call(
        ticketing,
        "search_tickets",
        assignee=f"agent_{marker}",
        created_before=(now - timedelta(minutes=5)).isoformat(),
    )
    assert page["tickets"] == []


@pytest.mark.parametrize("text", [None, "pagination"])
async def test_cursor_pages_through_every_match_once(
    ticketing: Client[Any], text: str | None
) -> None:
    customer = f"cust_{uuid.uuid4().hex[:8]}"
    made = {
        (await new_ticket(ticketing, subject=f"Pagination check {i}", customer_id=customer))["id"]
        for i in range(7)
    }
    seen: list[int] = []
    cursor = None
    while True:
        args: dict[str, Any] = {"customer_id": customer, "limit": 3, "text": text}
        page = await call(
            ticketing, "search_tickets", **args, **({"cursor": cursor} if cursor else {})
        )
        seen += [t["id"] for t in page["tickets"]]
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == sorted(made)
    assert len(seen) == len(set(seen))


# --- resource, prompt, completion -------------------------------------------------------------


async def test_ticket_resource_and_summary_prompt(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing)
    contents = await ticketing.read_resource(f"tickets://{ticket['id']}")
    assert isinstance(contents[0], mt.TextResourceContents)
    assert contents[0].mimeType == "application/json"
    assert f'"id": {ticket["id"]}' in contents[0].text
    prompt = await ticketing.get_prompt("summarize-ticket", {"ticket_id": str(ticket["id"])})
    message = prompt.messages[0].content
    assert isinstance(message, mt.TextContent)
    assert ticket["subject"] in message.text


async def test_ticket_ids_complete(ticketing: Client[Any]) -> None:
    ticket = await new_ticket(ticketing)
    ref = mt.PromptReference(type="ref/prompt", name="summarize-ticket")
    done = await ticketing.complete(ref, {"name": "ticket_id", "value": str(ticket["id"])})
    assert str(ticket["id"]) in done.values
    template = mt.ResourceTemplateReference(type="ref/resource", uri="tickets://{ticket_id}")
    newest = await new_ticket(ticketing)
    done = await ticketing.complete(template, {"name": "ticket_id", "value": ""})
    assert done.values[0] == str(newest["id"])  # newest first


async def test_tools_are_annotated_and_schemas_inline(ticketing: Client[Any]) -> None:
    tools = {t.name: t for t in await ticketing.list_tools()}
    assert set(tools) == {
        "create_ticket",
        "get_ticket",
        "search_tickets",
        "update_ticket",
        "add_comment",
        "close_ticket",
    }
    assert tools["get_ticket"].annotations and tools["get_ticket"].annotations.readOnlyHint
    assert tools["close_ticket"].annotations and tools["close_ticket"].annotations.destructiveHint
    for tool in tools.values():
        assert tool.description and len(tool.description) > 80
        assert tool.outputSchema and "$ref" not in str(tool.outputSchema)
        assert "idempotency_key" in tool.inputSchema["properties"] or tool.annotations.readOnlyHint  # type: ignore[union-attr]


# --- bad input: a typed error naming code and field; nothing written -------------------------

BAD_INPUT = [
    ("get_ticket", {"ticket_id": 987654321}, "not_found: ticket_id: "),
    ("get_ticket", {"ticket_id": "abc"}, "invalid_argument: ticket_id: "),
    ("update_ticket", {"ticket_id": 987654321, "status": "open"}, "not_found: ticket_id: "),
    ("add_comment", {"ticket_id": 987654321, "body": "hi"}, "not_found: ticket_id: "),
    ("close_ticket", {"ticket_id": 987654321}, "not_found: ticket_id: "),
    ("create_ticket", {"subject": "", "description": "x"}, "invalid_argument: subject: "),
    ("create_ticket", {"subject": "   ", "description": "x"}, "invalid_argument: subject: "),
    ("create_ticket", {"subject": "x" * 201, "description": "x"}, "invalid_argument: subject: "),
    (
        "create_ticket",
        {"subject": "s", "description": "x" * 20_001},
        "invalid_argument: description: ",
    ),
    (
        "create_ticket",
        {"subject": "s", "description": "d", "priority": "critical"},
        "invalid_argument: priority: ",
    ),
    ("create_ticket", {"subject": "s"}, "invalid_argument: description: required"),
    (
        "create_ticket",
        {"subject": "s", "description": "d", "requester_email": "nope"},
        "invalid_argument: requester_email: ",
    ),
    (
        "create_ticket",
        {"subject": "s", "description": "d", "tags": ["no spaces"]},
        "invalid_argument: tags.0: ",
    ),
    ("create_ticket", {"subject": "s\x00", "description": "d"}, "invalid_argument: subject: "),
    (
        "create_ticket",
        {"subject": "s", "description": "d", "colour": "red"},
        "invalid_argument: colour: ",
    ),
    ("search_tickets", {"cursor": "not-a-cursor"}, "invalid_argument: cursor: "),
    ("search_tickets", {"limit": 0}, "invalid_argument: limit: "),
    ("search_tickets", {"status": ["archived"]}, "invalid_argument: status.0: "),
    ("update_ticket", {"ticket_id": 1}, "invalid_argument: nothing to update"),
    ("update_ticket", {"ticket_id": 1, "status": "closed"}, "invalid_argument: status: "),
    ("add_comment", {"ticket_id": 1, "body": "x" * 20_001}, "invalid_argument: body: "),
]


@pytest.mark.parametrize(("tool", "arguments", "error"), BAD_INPUT)
async def test_bad_input_is_refused_and_changes_nothing(
    ticketing: Client[Any], db: Db, tool: str, arguments: dict[str, Any], error: str
) -> None:
    await new_ticket(ticketing)  # so that ticket 1 exists
    before = await snapshot(db)
    assert (await refused(ticketing, tool, **arguments)).startswith(error)
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("path", "target"),
    [([], "new"), (["pending"], "new"), (["solved"], "pending"), (["pending", "solved"], "new")],
)
async def test_illegal_transition_is_refused_and_changes_nothing(
    ticketing: Client[Any], db: Db, path: list[str], target: str
) -> None:
    ticket = await new_ticket(ticketing, priority="low")
    for status in path:
        await call(ticketing, "update_ticket", ticket_id=ticket["id"], status=status)
    if not path:  # new -> new is no move at all; go through open first to leave "new"
        await call(ticketing, "update_ticket", ticket_id=ticket["id"], status="open")
    before = await snapshot(db)
    text = await refused(
        ticketing, "update_ticket", ticket_id=ticket["id"], status=target, priority="urgent"
    )
    assert text.startswith("conflict: status: ")
    assert await snapshot(db) == before


async def test_closed_ticket_refuses_every_change(ticketing: Client[Any], db: Db) -> None:
    ticket = await new_ticket(ticketing)
    await call(ticketing, "close_ticket", ticket_id=ticket["id"])
    before = await snapshot(db)
    for tool, arguments in [
        ("update_ticket", {"status": "open"}),
        ("update_ticket", {"priority": "urgent"}),
        ("add_comment", {"body": "one more thing"}),
        ("close_ticket", {}),
    ]:
        text = await refused(ticketing, tool, ticket_id=ticket["id"], **arguments)
        assert text.startswith("conflict: ticket_id: ")
    assert await snapshot(db) == before


async def test_a_public_reply_is_sent_to_the_requester_under_a_one_line_subject(
    ticketing: Client[Any], settings: Settings
) -> None:
    made = await call(
        ticketing,
        "create_ticket",
        subject="Broken lamp\nsecond line",
        description="It arrived broken.",
        requester_email="mia.garcia@example.com",
    )
    await call(ticketing, "add_comment", ticket_id=made["id"], body="Sorry!", public=True)
    await call(ticketing, "add_comment", ticket_id=made["id"], body="Note", public=False)
    assert settings.kafka_bootstrap
    subject = f"ticket/{made['id']}"
    events = await read_events(
        settings.kafka_bootstrap,
        "notifications.outbound",
        lambda evs: any(e.subject == subject for e in evs),
    )
    [reply] = [e for e in events if e.subject == subject]  # the internal note notifies nobody
    assert reply.data["kind"] == "ticket.reply" and reply.data["body"] == "Sorry!"
    assert reply.data["to"] == ["mia.garcia@example.com"]  # the address itself, not masked
    assert reply.data["title"] == f"Re: Broken lamp second line [ticket #{made['id']}]"
