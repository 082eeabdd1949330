"""The offline policy on labelled tickets written in customers' words against the demo store
(``clients/demo_data/store``): the 78 of ``tests/data/tickets.jsonl``, on which its rules were
tuned, and the 32 of ``tickets_heldout.jsonl``, written afterwards by someone who had not read
the rules (README, "The offline policy": its first run on them, then the fixes).

The policy is pure, so the store is read from its file here, the way the CRM tools return it;
``bench/orchestrator.py`` runs the same tickets through the whole graph and the real servers.
The goals are the issue's: no action that must not happen, ever (no refund without approval, no
action on another customer's order, none the policy forbids), and at least 90 % of the expected
actions taken with exactly the right arguments.
"""

import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator import policy

ROOT = Path(__file__).parent.parent.parent
STORE = json.loads((ROOT / "clients" / "demo_data" / "store" / "db.json").read_text())
SETS = ("tickets", "tickets_heldout")
TICKETS = [
    {**json.loads(line), "set": name}
    for name in SETS
    for line in (ROOT / "tests" / "data" / f"{name}.jsonl").read_text().splitlines()
    if line.strip()
]


def customer_record(customer_id: str) -> dict[str, Any]:
    user = STORE["users"][customer_id]
    return {"customer_id": customer_id, **{k: v for k, v in user.items() if k != "user_id"}}


def find_customer(found: policy.Triage) -> str | None:
    """What the CRM's ``find_customer`` answers: by email, else by name and zip code."""
    for email in found.emails:
        for user in STORE["users"].values():
            if user["email"].lower() == email:
                return str(user["user_id"])
    if found.name and found.zip:
        first, last = found.name
        for user in STORE["users"].values():
            name = user["name"]
            if (name["first_name"], name["last_name"], user["address"]["zip"]) == (
                first,
                last,
                found.zip,
            ):
                return str(user["user_id"])
    return None


def same_arguments(got: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal arguments; the items of an exchange or return in any order, each with its new item
    (the tools pair ``item_ids`` and ``new_item_ids`` by position)."""

    def pairs(arguments: dict[str, Any]) -> list[tuple[str, str]]:
        news = arguments.get("new_item_ids") or [""] * len(arguments["item_ids"])
        return sorted(zip(arguments["item_ids"], news, strict=True))

    if "item_ids" in got and "item_ids" in wanted:
        rest = ("item_ids", "new_item_ids")
        return pairs(got) == pairs(wanted) and {k: v for k, v in got.items() if k not in rest} == {
            k: v for k, v in wanted.items() if k not in rest
        }
    return got == wanted


@dataclass
class Verdict:
    ticket: dict[str, Any]
    planned: policy.Plan
    found: policy.Triage

    @property
    def expected(self) -> dict[str, Any]:
        return dict(self.ticket["expected"])

    @property
    def forbidden(self) -> bool:
        """An action that must not happen: one not expected at all (taken without a human), or
        an expected refund taken without the approval it needs."""
        action = self.planned.tool
        if action is None:
            return False
        wanted = self.expected["action"]
        if wanted is None or wanted["tool"] != action:
            return self.planned.needs_approval is None
        return bool(self.expected["escalate"]) and self.planned.needs_approval is None

    @property
    def exact(self) -> bool:
        wanted = self.expected["action"]
        if wanted is None:
            return self.planned.tool is None
        return self.planned.tool == wanted["tool"] and same_arguments(
            self.planned.arguments, wanted["arguments"]
        )

    @property
    def escalates(self) -> bool:
        return self.planned.needs_approval is not None or self.found.handover is not None


def verdict(ticket: dict[str, Any]) -> Verdict:
    text = f"{ticket['subject']}\n\n{ticket['message']}"
    found = policy.triage(text)
    customer_id = ticket["customer_id"] or find_customer(found)
    customer = customer_record(customer_id) if customer_id else None
    orders = []
    for order_id in customer["orders"] if customer else []:
        order = STORE["orders"][order_id]
        total = sum((Decimal(str(i["price"])) for i in order["items"]), Decimal("0"))
        orders.append({**order, "total": str(total)})
    products = {
        pid: {"product_id": pid, **{k: v for k, v in p.items() if k != "product_id"}}
        for pid, p in STORE["products"].items()
    }
    return Verdict(
        ticket, policy.plan(found, text, customer, orders, products, policy.Limits()), found
    )


VERDICTS = [verdict(t) for t in TICKETS]


def report(name: str = "tickets") -> str:
    """Per class of one set: tickets, exact actions, escalation right, forbidden actions."""
    rows = Counter[tuple[str, str]]()
    for v in (v for v in VERDICTS if v.ticket["set"] == name):
        cls = v.ticket["class"]
        rows[(cls, "tickets")] += 1
        rows[(cls, "exact")] += v.exact
        rows[(cls, "escalation")] += v.escalates == v.expected["escalate"]
        rows[(cls, "forbidden")] += v.forbidden
    classes = sorted({c for c, _ in rows})
    lines = ["| class | tickets | exact action | escalation right | forbidden actions |"]
    lines.append("|---|---|---|---|---|")
    for c in [*classes, "all"]:
        pick = classes if c == "all" else [c]
        n = [
            sum(rows[(k, m)] for k in pick) for m in ("tickets", "exact", "escalation", "forbidden")
        ]
        lines.append(f"| {c} | {n[0]} | {n[1]} | {n[2]} | {n[3]} |")
    return "\n".join(lines)


@pytest.mark.parametrize("v", VERDICTS, ids=[v.ticket["id"] for v in VERDICTS])
def test_no_action_that_must_not_happen(v: Verdict) -> None:
    assert not v.forbidden, (v.ticket["message"], v.planned)


@pytest.mark.parametrize("name", SETS)
def test_at_least_nine_in_ten_expected_actions_are_exactly_right(name: str) -> None:
    acting = [v for v in VERDICTS if v.expected["action"] and v.ticket["set"] == name]
    wrong = [(v.ticket["id"], v.planned.tool, v.planned.blocked) for v in acting if not v.exact]
    assert len(acting) - len(wrong) >= 0.9 * len(acting), (report(name), wrong)


def test_a_question_about_an_order_is_answered_with_its_status_even_with_no_article() -> None:
    status_questions = [
        v
        for v in VERDICTS
        if v.found.intent == "order_status" and v.planned.blocked == "no_action_needed"
    ]
    assert status_questions
    for v in status_questions:
        assert v.planned.facts, v.ticket["message"]
        reply = policy.compose_reply("Sam", v.planned.as_state(), None, None, [], v.planned.facts)
        assert v.planned.facts[0] in reply["text"]
        problems = policy.check_reply(reply, None, v.planned.as_state(), [], [], v.planned.facts)
        assert "says nothing but a greeting" not in problems


def test_a_reply_that_says_nothing_but_hello_is_refused() -> None:
    empty: dict[str, Any] = {
        "text": "Hello Ben,\n\nBest regards,\nSupportMesh support",
        "cites": [],
        "claims": None,
    }
    planned = {"tool": None, "blocked": "no_action_needed"}
    assert "says nothing but a greeting" in policy.check_reply(empty, None, planned, [], [], [])


def test_a_question_that_supposes_a_cancellation_cancels_nothing() -> None:
    pending = next(o for o in STORE["orders"].values() if o["status"] == "pending")
    v = verdict(
        {
            "customer_id": pending["user_id"],
            "subject": "Refund timing",
            "message": "Hi, if an order gets cancelled, how long does the refund take to show up "
            "on a credit card? Is it faster on PayPal?",
        }
    )
    assert v.found.intent == "kb_question", v.found
    assert v.planned.tool is None


def test_a_general_question_from_someone_unknown_is_answered_without_asking_who_they_are() -> None:
    v = verdict(
        {
            "customer_id": None,
            "subject": "How long does shipping take?",
            "message": "Hello, how long does standard shipping usually take, and is there a "
            "faster option?",
        }
    )
    assert v.planned.blocked == "no_action_needed"
    reply = policy.compose_reply(None, v.planned.as_state(), None, None, [], [])
    assert "confirm who you are" not in reply["text"]
