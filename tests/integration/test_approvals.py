"""The approvals server through MCP clients, on real PostgreSQL, Kafka, Redis and Celery.

'alice' is an agent and 'bob' an approver: two servers on one database, each acting as its
configured identity (in-process calls carry no token).
"""

import asyncio
import time
import uuid
from typing import Any

import mcp.types as mt
from fastmcp import Client
from fastmcp.client.elicitation import ElicitResult

from schemas.roles import Role
from servers.approvals.server import build_server
from servers.runtime.settings import Settings
from tests.conftest import read_events
from tests.integration.test_ticketing_tools import Db, call, refused

REFUND = {
    "subject": "order/#W2378156",
    "action_tool": "crm.return_delivered_order_items",
    "action_arguments": {"order_id": "#W2378156", "item_ids": ["4602305039"]},
    "amount": "129.99",
    "reason": "Arrived broken; customer sent photos.",
}


async def snapshot(db: Db) -> tuple[Any, ...]:
    cur = await db.execute(
        "SELECT (SELECT count(*) FROM approvals.approvals),"
        " (SELECT md5(coalesce(string_agg(a::text, ',' ORDER BY id), ''))"
        "  FROM approvals.approvals a),"
        " (SELECT count(*) FROM approvals.outbox), (SELECT count(*) FROM approvals.audit)"
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def test_request_then_approve(
    approvals: Client[Any], approver: Client[Any], db: Db, settings: Settings
) -> None:
    asked = await call(approvals, "request_approval", **REFUND)
    assert asked["status"] == "pending" and asked["requested_by"] == "alice"
    assert asked["amount"] == "129.99" and asked["action_arguments"] == REFUND["action_arguments"]
    assert asked["id"] in [
        a["id"] for a in (await call(approver, "list_pending_approvals"))["approvals"]
    ]
    decided = await call(
        approver, "decide_approval", approval_id=asked["id"], decision="approve", comment="ok"
    )
    assert (decided["status"], decided["decided_by"], decided["comment"]) == (
        "approved",
        "bob",
        "ok",
    )
    assert await call(approvals, "get_approval", approval_id=asked["id"]) == decided
    again = await refused(approver, "decide_approval", approval_id=asked["id"], decision="reject")
    assert again == "conflict: approval_id: already approved by bob"
    resource = await approvals.read_resource(f"approvals://{asked['id']}")
    assert isinstance(resource[0], mt.TextResourceContents) and '"approved"' in resource[0].text
    audit = await db.execute(
        "SELECT actor, tool FROM approvals.audit WHERE subject = %s ORDER BY id",
        [f"approval/{asked['id']}"],
    )
    assert await audit.fetchall() == [("alice", "request_approval"), ("bob", "decide_approval")]
    assert settings.kafka_bootstrap
    events = await read_events(
        settings.kafka_bootstrap,
        "human.approvals",
        lambda evs: any(e.type == "approval.decided" and asked["id"] in e.subject for e in evs),
    )
    mine = [e for e in events if e.subject == f"approval/{asked['id']}"]
    assert [e.type for e in mine] == ["approval.requested", "approval.decided"]
    assert mine[1].data["status"] == "approved" and mine[1].data["decided_by"] == "bob"


async def test_reject_is_final(approvals: Client[Any], approver: Client[Any], db: Db) -> None:
    asked = await call(approvals, "request_approval", **REFUND)
    rejected = await call(approver, "decide_approval", approval_id=asked["id"], decision="reject")
    assert rejected["status"] == "rejected"
    before = await snapshot(db)
    again = await refused(approver, "decide_approval", approval_id=asked["id"], decision="approve")
    assert again == "conflict: approval_id: already rejected by bob"
    assert await snapshot(db) == before


async def test_nobody_decides_their_own_request(approver: Client[Any], db: Db) -> None:
    mine = await call(approver, "request_approval", **REFUND)
    before = await snapshot(db)
    text = await refused(approver, "decide_approval", approval_id=mine["id"], decision="approve")
    assert text.startswith("permission_denied: approval_id: you requested this approval")
    assert await snapshot(db) == before


async def test_an_agent_cannot_decide(approvals: Client[Any], db: Db) -> None:
    asked = await call(approvals, "request_approval", **REFUND)
    before = await snapshot(db)
    text = await refused(approvals, "decide_approval", approval_id=asked["id"], decision="approve")
    assert text == "permission_denied: scope: decide_approval needs the 'approver' scope"
    assert await snapshot(db) == before


async def test_two_approvers_at_once_decide_once(
    approvals: Client[Any], approvals_settings: Settings
) -> None:
    asked = await call(approvals, "request_approval", **REFUND)
    carol = approvals_settings.model_copy(update={"actor": "carol", "role": Role.APPROVER})
    dave = approvals_settings.model_copy(update={"actor": "dave", "role": Role.APPROVER})
    async with Client(build_server(carol)) as c, Client(build_server(dave)) as d:
        results = await asyncio.gather(
            c.call_tool(
                "decide_approval",
                {"approval_id": asked["id"], "decision": "approve"},
                raise_on_error=False,
            ),
            d.call_tool(
                "decide_approval",
                {"approval_id": asked["id"], "decision": "reject"},
                raise_on_error=False,
            ),
        )
    winners = [r for r in results if not r.is_error]
    losers = [r for r in results if r.is_error]
    assert len(winners) == 1 and len(losers) == 1
    loser_text = losers[0].content[0]
    assert isinstance(loser_text, mt.TextContent) and loser_text.text.startswith("conflict: ")
    final = await call(approvals, "get_approval", approval_id=asked["id"])
    assert final == winners[0].structured_content


async def test_same_idempotency_key_requests_once(approvals: Client[Any], db: Db) -> None:
    key = f"refund-{uuid.uuid4()}"
    first = await call(approvals, "request_approval", **REFUND, idempotency_key=key)
    before = await snapshot(db)
    second = await call(approvals, "request_approval", **REFUND, idempotency_key=key)
    assert first == second and await snapshot(db) == before
    other = await refused(
        approvals, "request_approval", **{**REFUND, "amount": "1.00"}, idempotency_key=key
    )
    assert other.startswith("conflict: idempotency_key")


async def test_undecided_approvals_expire_through_beat_and_worker(
    approvals: Client[Any], approver: Client[Any], db: Db, settings: Settings
) -> None:
    asked = await call(approvals, "request_approval", **REFUND, expires_in_seconds=1)
    deadline = time.monotonic() + 30
    while True:  # the beat sends the sweep every 0.5 s; a worker in the server runs it
        cur = await db.execute(
            "SELECT status FROM approvals.approvals WHERE id = %s", [asked["id"]]
        )
        if await cur.fetchone() == ("expired",):
            break
        assert time.monotonic() < deadline, "not expired by the sweep"
        await asyncio.sleep(0.2)
    expired = await call(approvals, "get_approval", approval_id=asked["id"])
    assert expired["status"] == "expired" and expired["decided_by"] is None
    assert asked["id"] not in [
        a["id"] for a in (await call(approver, "list_pending_approvals"))["approvals"]
    ]
    text = await refused(approver, "decide_approval", approval_id=asked["id"], decision="approve")
    assert text == "conflict: approval_id: already expired"
    assert settings.kafka_bootstrap
    events = await read_events(
        settings.kafka_bootstrap,
        "human.approvals",
        lambda evs: any(e.type == "approval.expired" and asked["id"] in e.subject for e in evs),
    )
    audit = await db.execute(
        "SELECT actor FROM approvals.audit WHERE tool = 'expire_approval' AND subject = %s",
        [f"approval/{asked['id']}"],
    )
    assert await audit.fetchall() == [("system:approval-expiry",)]
    assert events


async def test_pending_list_pages_and_filters(
    approvals: Client[Any], approver: Client[Any]
) -> None:
    subject = f"ticket/{uuid.uuid4().int % 10**9}"
    made = [
        (await call(approvals, "request_approval", **{**REFUND, "subject": subject}))["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = await call(
            approver, "list_pending_approvals", subject=subject, limit=2, cursor=cursor
        )
        seen += [a["id"] for a in page["approvals"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == made
    text = await refused(approver, "list_pending_approvals", subject="other", cursor=cursor or "x")
    assert text.startswith("invalid_argument: cursor")
    first = await call(approver, "list_pending_approvals", subject=subject, limit=2)
    text = await refused(
        approver, "list_pending_approvals", subject="ticket/other", cursor=first["next_cursor"]
    )
    assert text == "invalid_argument: cursor: belongs to a query with other filters"
    resource = await approver.read_resource("approvals://pending")
    assert isinstance(resource[0], mt.TextResourceContents) and made[0] in resource[0].text
    template = mt.ResourceTemplateReference(type="ref/resource", uri="approvals://{approval_id}")
    done = await approver.complete(template, {"name": "approval_id", "value": made[3][:12]})
    assert made[3] in done.values


async def test_bad_input_is_refused_by_field_and_writes_nothing(
    approvals: Client[Any], approver: Client[Any], db: Db
) -> None:
    before = await snapshot(db)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**REFUND, "reason": "  "}, "reason"),
        ({**REFUND, "amount": "-1"}, "amount"),
        ({**REFUND, "amount": "1.001"}, "amount"),
        ({**REFUND, "currency": "dollars"}, "currency"),
        ({**REFUND, "action_tool": "Refund Everything!"}, "action_tool"),
        ({**REFUND, "subject": ""}, "subject"),
        ({**REFUND, "expires_in_seconds": 0}, "expires_in_seconds"),
        ({**REFUND, "surprise": 1}, "surprise"),
    ]
    for arguments, field in cases:
        text = await refused(approvals, "request_approval", **arguments)
        assert text.startswith(f"invalid_argument: {field}"), (field, text)
    text = await refused(approver, "decide_approval", approval_id="apr_1", decision="approve")
    assert text.startswith("invalid_argument: approval_id")
    missing = f"apr_{uuid.uuid4().hex}"
    text = await refused(approver, "decide_approval", approval_id=missing, decision="approve")
    assert text == f"not_found: approval_id: no approval {missing}"
    text = await refused(approver, "decide_approval", approval_id=missing, decision="maybe")
    assert text.startswith("invalid_argument: decision")
    text = await refused(approvals, "get_approval", approval_id="42")
    assert text.startswith("invalid_argument: approval_id")
    text = await refused(approvals, "list_pending_approvals", limit=0)
    assert text.startswith("invalid_argument: limit")
    text = await refused(approvals, "list_pending_approvals", requested_by="x" * 201)
    assert text.startswith("invalid_argument: requested_by")
    assert await snapshot(db) == before


async def test_approver_confirms_in_a_form_where_the_client_can_show_one(
    approvals: Client[Any], approvals_settings: Settings, db: Db
) -> None:
    erin = approvals_settings.model_copy(update={"actor": "erin", "role": Role.APPROVER})
    shown: list[str] = []

    async def decline(message: str, *_: Any) -> ElicitResult[Any]:
        shown.append(message)
        return ElicitResult(action="decline")

    async def accept(message: str, *_: Any) -> ElicitResult[Any]:
        return ElicitResult(action="accept", content={})

    asked = await call(approvals, "request_approval", **REFUND)
    before = await snapshot(db)
    async with Client(build_server(erin), elicitation_handler=decline) as client:
        text = await refused(client, "decide_approval", approval_id=asked["id"], decision="approve")
    assert text == "conflict: decision: not confirmed by the approver; nothing was decided"
    assert await snapshot(db) == before
    assert "crm.return_delivered_order_items" in shown[0] and "129.99 USD" in shown[0]
    async with Client(build_server(erin), elicitation_handler=accept) as client:
        decided = await call(client, "decide_approval", approval_id=asked["id"], decision="approve")
    assert decided["status"] == "approved" and decided["decided_by"] == "erin"


async def test_approvers_are_told_of_a_request_and_reminded_once_before_it_expires(
    approvals: Client[Any], settings: Settings
) -> None:
    # expires in 10 minutes: within the hour's warning, so the next sweep reminds
    asked = await call(approvals, "request_approval", **REFUND, expires_in_seconds=600)
    assert settings.kafka_bootstrap

    def about_it(events: list[Any]) -> list[Any]:
        return [e for e in events if e.data.get("approval_id") == asked["id"]]

    def both(evs: list[Any]) -> bool:
        return {"approval.waiting", "approval.expiring"} <= {e.data["kind"] for e in about_it(evs)}

    await read_events(settings.kafka_bootstrap, "notifications.outbound", both)
    await asyncio.sleep(2)  # four more sweeps
    events = about_it(await read_events(settings.kafka_bootstrap, "notifications.outbound", both))
    assert sorted(e.data["kind"] for e in events) == ["approval.expiring", "approval.waiting"]
    waiting = next(e for e in events if e.data["kind"] == "approval.waiting")
    assert waiting.data["to"] == settings.notify_approvers  # addresses, not masked
    assert "129.99 USD" in waiting.data["title"] and asked["id"] in waiting.data["body"]
