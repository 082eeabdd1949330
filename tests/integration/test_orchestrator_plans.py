"""Plans of several writes, through the whole graph and the real servers (demo store): each
write made once, in order, under a key of its own; one the CRM refuses stops the rest; the
reply and, when a human takes over, the internal note say exactly what was and was not done.

Ada Quill (ada_quill_1001): #W9000001 pending (Travel Mug, Desk Lamp; credit card), #W9000003
pending (one Travel Mug, $19.50; gift card).
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from fastmcp import Client
from langchain_core.messages import AIMessage

from orchestrator.policy import Limits
from schemas.roles import Role
from servers.crm.store import Crm
from servers.runtime.settings import Settings
from tests.conftest import order_record, order_status, token
from tests.integration.test_orchestrator import (
    ScriptedModel,
    agent,
    call,
    count,
    new_ticket,
    run,
    ticket_of,
)

__all__ = ["agent"]  # a fixture, shared with test_orchestrator.py

TWO_THINGS = (
    "Hi, two things. Please cancel order #W9000003, I ordered it by mistake. Also ship order "
    "#W9000001 to 12 Oak Street, Portland, OR 97205 instead."
)


async def shipped_to(crm: Crm, order_id: str) -> str:
    return str((await order_record(crm, order_id))["address"]["address1"])


async def test_a_message_asking_two_things_gets_both_written_once_in_order(
    settings: Settings, urls: dict[str, str], agent: Client[Any], demo_store: Crm
) -> None:
    since = datetime.now().astimezone()
    ticket_id = await new_ticket(agent, "ada_quill_1001", "Two things", TWO_THINGS)
    state = await run(settings, urls, ticket_id, Limits())
    assert [a["tool"] for a in state["plan"]["actions"]] == [
        "cancel_pending_order",
        "modify_pending_order_address",
    ]
    assert state["outcome"]["status"] == "done" and state["outcome"]["done"] == [0, 1]
    assert await order_status(demo_store, "#W9000003") == "cancelled"
    assert await shipped_to(demo_store, "#W9000001") == "12 Oak Street"
    reply = state["reply"]["text"]
    assert "cancel order #W9000003" in reply and "12 Oak Street, Portland, OR 97205" in reply
    assert "gift_card_" not in reply and "credit_card_" not in reply  # "your gift card"
    assert (await ticket_of(agent, ticket_id))["status"] == "solved"
    # Each write once, under its own key: a second run of the finished thread writes nothing.
    await run(settings, urls, ticket_id, Limits())
    writes = await count(
        settings,
        "SELECT count(*) FROM crm.audit WHERE actor = 'orchestrator' AND at >= %s",
        since,
    )
    assert writes == 2


async def test_a_write_the_crm_refuses_stops_the_rest_and_a_human_is_told_exactly_what_was_done(
    settings: Settings, urls: dict[str, str], agent: Client[Any], demo_store: Crm
) -> None:
    """The plan waits for a human (refund above a threshold of $10); meanwhile a colleague
    cancels #W9000003 by hand. After the approval the cancellation is refused, and the address
    change planned after it is not made."""
    limits = Limits(approval_threshold=Decimal("10"))
    ticket_id = await new_ticket(agent, "ada_quill_1001", "Two things", TWO_THINGS)
    paused = await run(settings, urls, ticket_id, limits)
    (request,) = paused["__interrupt__"]
    approval_id = request.value["approval_id"]
    assert [r["name"] for r in request.value["action_requests"]] == [
        "cancel_pending_order",
        "modify_pending_order_address",
    ]
    async with Client(urls["crm"], auth=token(settings, Role.AGENT, "colleague")) as crm:
        await crm.call_tool(
            "cancel_pending_order", {"order_id": "#W9000003", "reason": "no longer needed"}
        )
    async with Client(urls["approvals"], auth=token(settings, Role.APPROVER, "lead")) as lead:
        decided = await lead.call_tool(
            "decide_approval", {"approval_id": approval_id, "decision": "approve"}
        )
        assert decided.structured_content is not None
        assert decided.structured_content["action_tool"] == "orchestrator.plan"
    done = await run(settings, urls, ticket_id, limits, resume={"approval_id": approval_id})
    assert done["outcome"]["status"] == "failed" and done["outcome"]["failed"] == 0
    assert await shipped_to(demo_store, "#W9000001") != "12 Oak Street"
    reply = done["reply"]["text"]
    assert "our system refused it" in reply and "I have not gone on with" in reply
    ticket = await ticket_of(agent, ticket_id)
    assert ticket["status"] == "open" and "needs-human" in ticket["tags"]
    notes = [c["body"] for c in ticket["comments"] if not c["public"]]
    assert any("Done: nothing" in n and "Refused: cancel order #W9000003" in n for n in notes)


async def test_a_model_s_several_proposals_are_checked_and_carried_out_in_order(
    settings: Settings, urls: dict[str, str], agent: Client[Any], demo_store: Crm
) -> None:
    """A scripted chat model proposes two writes; both are checked as the offline policy's are
    (its own orders, priced from the CRM) and made in order. A third, on another customer's
    order, would have refused the whole plan (test_orchestrator.py)."""
    model = ScriptedModel(
        responses=[
            call("cancel_pending_order", order_id="#W9000003", reason="ordered by mistake"),
            call(
                "modify_pending_order_address",
                order_id="#W9000001",
                address1="12 Oak Street",
                address2="",
                city="Portland",
                state="OR",
                country="USA",
                zip="97205",
            ),
            AIMessage("Both proposed."),
        ]
    )
    ticket_id = await new_ticket(agent, "ada_quill_1001", "Two things", TWO_THINGS)
    state = await run(settings, urls, ticket_id, Limits(), model=model)
    assert [a["tool"] for a in state["plan"]["actions"]] == [
        "cancel_pending_order",
        "modify_pending_order_address",
    ]
    assert Decimal(state["plan"]["amount"]) == Decimal("19.5")
    assert state["outcome"]["done"] == [0, 1]
    assert await order_status(demo_store, "#W9000003") == "cancelled"
    assert await shipped_to(demo_store, "#W9000001") == "12 Oak Street"
