"""The offline policy on labelled ticket sets, as the graph runs it, with a store read from its
file in place of the CRM server (the policy is pure; the graph's CRM calls are reproduced here
with the CRM's own matching rules).

Sets (``tests/data``): ``tickets`` (78, demo store; the rules' first tuning set),
``tickets_heldout`` (32, demo store), ``tickets_tau2`` (120, tau2-bench's retail store, written
by two helpers who had not read the policy), ``tickets_tau2_late`` (40, the same store, written
after the rules were done), ``tickets_tau2_late2``, ``tickets_tau2_late3`` and
``tickets_tau2_late4`` (40 each, by a fourth, fifth and sixth helper, each after the fixes the
batch before led to). A tau2 ticket's ``expected.writes`` are the exact writes its answer key
wants; a demo-store ticket's ``expected.action`` is one write or none.

Scoring: a ticket is exact when the planned writes equal the expected ones (items of a write in
any order, each with its new item). A planned write not expected is a wrong write; an expected
one not planned is a miss. ``bench/policy_sets.py`` prints the tables; the unit gate
(``tests/unit/test_policy_sets.py``) holds the goals.
"""

import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from orchestrator import policy
from orchestrator.finding import identity_lookups
from orchestrator.triage import Triage, classify
from tests.conftest import shared_data

ROOT = Path(__file__).parent.parent
DEMO_STORE = ROOT / "clients" / "demo_data" / "store" / "db.json"
SETS = {
    "tickets": DEMO_STORE,
    "tickets_heldout": DEMO_STORE,
    "tickets_tau2": "tau2",
    "tickets_tau2_late": "tau2",
    "tickets_tau2_late2": "tau2",
    "tickets_tau2_late3": "tau2",
    "tickets_tau2_late4": "tau2",
}


@dataclass
class Store:
    """A retail store file, answering what the graph asks the CRM."""

    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> "Store":
        return cls(json.loads(path.read_text()))

    def find_customer(self, arguments: dict[str, str]) -> str | None:
        """``find_customer``: by email, or by first name, last name and zip (case ignored)."""
        for user in self.data["users"].values():
            if "email" in arguments:
                if user["email"].lower() == arguments["email"].lower():
                    return str(user["user_id"])
                continue
            name = user["name"]
            if (
                name["first_name"].lower() == arguments["first_name"].lower()
                and name["last_name"].lower() == arguments["last_name"].lower()
                and user["address"]["zip"] == arguments["zip"]
            ):
                return str(user["user_id"])
        return None

    def customer(self, customer_id: str) -> dict[str, Any]:
        user = self.data["users"][customer_id]
        return {"customer_id": customer_id, **{k: v for k, v in user.items() if k != "user_id"}}

    def orders(self, customer_id: str) -> list[dict[str, Any]]:
        found = []
        for order_id in self.data["users"][customer_id]["orders"]:
            order = self.data["orders"][order_id]
            total = sum((Decimal(str(i["price"])) for i in order["items"]), Decimal("0"))
            found.append({**order, "total": str(total)})
        return found

    def product(self, product_id: str) -> dict[str, Any]:
        return {"product_id": product_id, **self.data["products"][product_id]}

    def product_types(self) -> list[dict[str, str]]:
        return [{"name": p["name"], "product_id": k} for k, p in self.data["products"].items()]


def store_for(name: str) -> Store | None:
    where = SETS[name]
    if where == "tau2":
        data = shared_data()
        return Store.read(data / "tau2" / "retail" / "db.json") if data else None
    assert isinstance(where, Path)
    return Store.read(where)


def tickets(name: str) -> list[dict[str, Any]]:
    path = ROOT / "tests" / "data" / f"{name}.jsonl"
    if not path.exists():
        return []
    return [
        {**json.loads(line), "set": name} for line in path.read_text().splitlines() if line.strip()
    ]


def expected_writes(ticket: dict[str, Any]) -> list[dict[str, Any]]:
    expected = ticket["expected"]
    if "writes" in expected:
        return list(expected["writes"])
    return [expected["action"]] if expected.get("action") else []


@dataclass
class Run:
    """What the policy made of one ticket."""

    ticket: dict[str, Any]
    customer_id: str | None
    found: Triage
    plan: policy.Plan

    @property
    def writes(self) -> list[dict[str, Any]]:
        return [{"tool": a.tool, "arguments": a.arguments} for a in self.plan.actions]

    def _keys(self, writes: list[dict[str, Any]]) -> Counter[str]:
        return Counter(_key(w) for w in writes)

    @property
    def wrong(self) -> list[dict[str, Any]]:
        extra = self._keys(self.writes) - self._keys(expected_writes(self.ticket))
        return [json.loads(k) for k in extra.elements()]

    @property
    def missed(self) -> list[dict[str, Any]]:
        lost = self._keys(expected_writes(self.ticket)) - self._keys(self.writes)
        return [json.loads(k) for k in lost.elements()]

    @property
    def exact(self) -> bool:
        return not self.wrong and not self.missed


def _key(write: dict[str, Any]) -> str:
    arguments = dict(write["arguments"])
    if "item_ids" in arguments:
        news = arguments.pop("new_item_ids", None) or [""] * len(arguments["item_ids"])
        arguments["pairs"] = sorted(zip(arguments.pop("item_ids"), news, strict=True))
    for name in ("address1", "address2", "city"):
        if name in arguments:
            arguments[name] = " ".join(str(arguments[name]).lower().replace(",", " ").split())
    return json.dumps({"tool": write["tool"], "arguments": arguments}, sort_keys=True)


def run(ticket: dict[str, Any], store: Store) -> Run:
    """The ticket through triage, identification, the CRM look-ups and the plan, as the graph
    does them."""
    text = f"{ticket['subject']}\n\n{ticket['message']}"
    found = classify(text)
    customer_id = ticket.get("customer_id")
    if customer_id is None:
        matches = [store.find_customer(lookup.arguments()) for lookup in identity_lookups(text)]
        customer_id, _ = policy.identified(matches)
    customer = store.customer(customer_id) if customer_id else None
    orders = store.orders(customer_id) if customer_id else []
    wanted = policy.products_wanted(text, orders, store.product_types())
    products = {pid: store.product(pid) for pid in wanted}
    return Run(
        ticket,
        customer_id,
        found,
        policy.plan(found, text, customer, orders, products, policy.Limits()),
    )


def table(runs: list[Run]) -> str:
    """Per class: tickets, exact, wrong writes, missed writes, customer identified right."""
    rows: Counter[tuple[str, str]] = Counter()
    for r in runs:
        for cls in (r.ticket["class"], "all"):
            rows[cls, "tickets"] += 1
            rows[cls, "exact"] += r.exact
            rows[cls, "wrong"] += len(r.wrong)
            rows[cls, "missed"] += len(r.missed)
        if expected_writes(r.ticket):
            rows["with writes", "tickets"] += 1
            rows["with writes", "exact"] += r.exact
            rows["with writes", "wrong"] += len(r.wrong)
            rows["with writes", "missed"] += len(r.missed)
    classes = sorted({c for c, _ in rows if c not in ("all", "with writes")})
    lines = ["| class | tickets | exact | wrong writes | missed writes |", "|---|---|---|---|---|"]
    for cls in [*classes, "with writes", "all"]:
        n = [rows[cls, m] for m in ("tickets", "exact", "wrong", "missed")]
        lines.append(f"| {cls} | {n[0]} | {n[1]} | {n[2]} | {n[3]} |")
    return "\n".join(lines)
