"""The offline policy: deterministic rules that really handle a retail support ticket.

It decides what a model would when no model is configured, in three steps over the store's own
facts (STYLE, Do 13):

- **find** (``orchestrator.finding``, ``orchestrator.reading``): every candidate the message
  offers: emails, zip codes, names, order ids, addresses, and each request it makes;
- **check** (``orchestrator.choosing``, ``orchestrator.catalogue``): which of the customer's
  orders, items, variants and payment methods the words name, and whether exactly one fits;
- **decide** (here): a plan of writes, one per thing asked that the store's policy allows and
  the message fully determines, each checked as a single write always was (the customer's own
  order, its real state, prices from the CRM), gated for a human's approval where the policy
  says so; and, for what cannot be done, why (the reply asks for what is missing).

Nothing here does I/O: the graph's nodes fetch, this module decides. The rules are the
tau2-bench retail policy: only pending orders are cancelled or modified, only delivered ones
returned or exchanged, a cancellation needs one of two reasons, refunds go to the original
payment method or a gift card, a price difference needs a payment method named, and a refund
above a threshold, or any refund for a VIP, waits for a human's approval. When anything a write
needs is missing or fits more than one record, that write is not made.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from orchestrator import catalogue, choosing, reading
from orchestrator.choosing import PENDING, Found, original_method
from orchestrator.finding import order_ids
from orchestrator.replies import (
    address_text,
    item_text,
    items_text,
    method_label,
    order_fact,
    product_fact,
)
from orchestrator.triage import INTENT_OF, Triage

ACTIONABLE = tuple(INTENT_OF.values())
REFUNDING = ("cancel_pending_order", "return_delivered_order_items")
ITEM_TOOLS = ("exchange_delivered_order_items", "modify_pending_order_items")
# A question in the customer's words about a product's range: "how many colours", "in stock".
RANGE_QUESTION = re.compile(
    r"\bhow many\b|\bin stock\b|\bdo you (?:have|sell|carry)\b|\bwhat (?:colou?rs|sizes|options)\b"
    r"|\bcome in\b|\bavailable in\b"
)


@dataclass(frozen=True)
class Limits:
    """The store's thresholds, from settings."""

    approval_threshold: Decimal = Decimal("250")  # a refund above this waits for a human
    vip_lifetime_spend: Decimal = Decimal("1500")  # customers who spent this much are VIPs
    approval_expires_seconds: int = 24 * 3600  # undecided this long: expired, no action


def identified(matches: Sequence[str | None]) -> tuple[str | None, str]:
    """The customer, when the CRM's answers to every candidate of the message (each email,
    each name with each zip code) name exactly one; else None and why: ``nobody`` matched, or
    ``several`` customers did (the agent asks, never picks)."""
    named = set(m for m in matches if m)
    if len(named) == 1:
        return named.pop(), "one match"
    return None, "several" if named else "nobody"


def products_wanted(
    text: str, orders: Sequence[Mapping[str, Any]], product_types: Sequence[Mapping[str, str]]
) -> list[str]:
    """The products the policy needs to see (their variants and options): those of the items
    in the customer's orders, and those the message names ("how many wall clocks…", "exchange
    it for a water bottle")."""
    wanted = [i["product_id"] for o in orders for i in o["items"]]
    named = catalogue.product_spans(text, [p["name"] for p in product_types])
    names = set().union(*(s.names for s in named)) if named else set()
    wanted += [p["product_id"] for p in product_types if p["name"].lower() in names]
    return list(dict.fromkeys(str(w) for w in wanted))


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class Action:
    """One CRM write with its exact arguments, and what the customer is told of it."""

    tool: str
    arguments: dict[str, Any]
    order_id: str | None
    summary: str  # what it does, with its specifics, in words the customer knows
    amount: Decimal = Decimal("0")  # money going back to the customer (cancel, return)

    def as_state(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "arguments": self.arguments,
            "order_id": self.order_id,
            "summary": self.summary,
            "amount": str(self.amount),
        }


@dataclass
class Declined:
    """A request the plan does not carry out, and why (a code the reply explains)."""

    intent: str
    why: str
    order_id: str | None = None
    detail: str = ""  # what the customer should know besides (e.g. where a refund may go)

    def as_state(self) -> dict[str, Any]:
        return {
            "intent": self.intent,
            "why": self.why,
            "order_id": self.order_id,
            "detail": self.detail,
        }


@dataclass
class Plan:
    """What to do about a ticket: CRM writes in order, the requests not done and why, and the
    facts the reply may state."""

    actions: list[Action] = field(default_factory=list)
    declined: list[Declined] = field(default_factory=list)
    needs_approval: str | None = None  # why a human must approve the writes first
    blocked: str | None = None  # why nothing is done at all: the reply explains it
    facts: list[str] = field(default_factory=list)

    @property
    def amount(self) -> Decimal:
        return sum((a.amount for a in self.actions), Decimal("0"))

    @property
    def tools(self) -> list[str]:
        return [a.tool for a in self.actions]

    def as_state(self) -> dict[str, Any]:
        return {
            "actions": [a.as_state() for a in self.actions],
            "declined": [d.as_state() for d in self.declined],
            "needs_approval": self.needs_approval,
            "blocked": self.blocked,
            "facts": self.facts,
            "amount": str(self.amount),
        }


def lifetime_spend(orders: list[dict[str, Any]]) -> Decimal:
    """What a customer paid on orders that were not cancelled."""
    return sum(
        (Decimal(str(o["total"])) for o in orders if o["status"] != "cancelled"), Decimal("0")
    )


def plan(
    found: Triage,
    text: str,
    customer: dict[str, Any] | None,
    orders: list[dict[str, Any]],
    products: dict[str, dict[str, Any]],
    limits: Limits,
) -> Plan:
    """The writes the ticket calls for under the store's policy, and what cannot be done.

    ``orders`` are the customer's orders as ``get_order`` returns them plus ``total``;
    ``products`` the products of their items (and of products the message names), by id.
    """
    if found.handover:
        return Plan(blocked=f"handover:{found.handover}")
    if customer is None:
        if found.intent in ("kb_question", "other") and not found.order_ids:
            return Plan(blocked="no_action_needed")  # a general question: anyone may ask it
        return Plan(blocked="unidentified")
    deciding = _Deciding(text, customer, orders, products)
    names = sorted({i["name"] for o in orders for i in o["items"]})
    taken = False  # whether the request before made a write
    for request in _continued(_asked(text), text, names):
        if reading.is_fallback(text, request):
            # "swap it for the large one. If not, cancel the order": the other branch only when
            # the first could not be done because the store has no such thing.
            unavailable = deciding.declined and deciding.declined[-1].why in (
                "unavailable",
                "no_variant",
            )
            if taken or not unavailable:
                continue
        before = len(deciding.actions)
        deciding.decide(request)
        taken = len(deciding.actions) > before
    for request in reading.requests(text):
        if request.intent == "info":
            deciding.look_up(request)
    if deciding.actions or len(deciding.declined) > 1:
        # "Could you change where my order is going? Ship it to …": a verb that named no
        # option, beside requests that did, asked for nothing of its own.
        deciding.declined = [d for d in deciding.declined if d.why != "vague"]
    for declined in deciding.declined:
        declined.why = "no_variant" if declined.why == "vague" else declined.why
    done = {(_intent_of(a.tool), a.order_id) for a in deciding.actions}
    deciding.declined = [  # a request asked twice ("exchange it. Could I get it in silver?")
        d
        for d in deciding.declined
        if (d.intent, d.order_id) not in done
        and not (d.order_id is None and any(d.intent == intent for intent, _ in done))
    ]
    result = Plan(
        actions=_merged(deciding.actions, orders, products),
        declined=deciding.declined,
        facts=deciding.facts(found),
    )
    if not result.actions and not result.declined:
        # Nothing to do; a question the help centre answers, or facts to state, make a reply.
        # A message the policy could make nothing of goes to a person instead.
        answered = result.facts or "kb_question" in found.intents
        result.blocked = "no_action_needed" if answered else "handover:unclear"
    return with_approval(result, orders, limits)


def _asked(text: str) -> list[reading.Request]:
    """The message's requests for writes; of verbs in one clause, the one its object decides
    ("change the shipping address" is an address change, not an item change)."""
    found = [r for r in reading.requests(text) if r.intent in INTENT_OF]
    by_clause: dict[tuple[int, int], set[str]] = {}
    for r in found:
        by_clause.setdefault(r.clause, set()).add(r.intent)
    kept = []
    for r in found:
        others = by_clause[r.clause]
        if r.intent == "change_items" and others & {"order_address", "profile_address", "payment"}:
            continue
        if r.intent == "payment" and others & {"order_address", "profile_address"}:
            continue
        if r.intent == "payment" and re.search(
            r"\b(?:difference|extra|costs? more|cost less)\b"
            r"|\brefund(?:ed)? (?:\w+ )?(?:to|onto|on)\b",
            reading.folded(choosing.text_of(text, r.clause)),
        ):
            continue  # "put the difference on my PayPal": how a change is paid, not a change
        if r.intent == "profile_address" and "order_address" in others:
            continue  # "ship it to my home address on my profile": the profile is a reference
        if r.intent == "change_items" and reading.address_in(choosing.text_of(text, r.clause)):
            continue
        kept.append(r)
    return kept


def _intent_of(tool: str) -> str:
    return {
        "cancel_pending_order": "cancel",
        "return_delivered_order_items": "return",
        "exchange_delivered_order_items": "exchange",
        "modify_pending_order_items": "exchange",
        "modify_pending_order_address": "modify_address",
        "update_customer_address": "update_profile_address",
        "modify_pending_order_payment": "modify_payment",
    }[tool]


def _continued(
    requests: list[reading.Request], text: str, names: Sequence[str]
) -> list[reading.Request]:
    """Requests with a sentence that goes on with the one before rather than asking anew ("I'd
    like to exchange the luggage set. Could I get it in silver instead?") joined to it: the
    later one names no order and no product, and asks for the same kind of change."""
    joined: list[reading.Request] = []
    for request in requests:
        previous = joined[-1] if joined else None
        clause = choosing.text_of(text, request.clause)
        if (
            previous is not None
            and previous.intent == request.intent
            and not order_ids(clause)
            and not catalogue.product_spans(clause, names)
        ):
            levels = tuple(
                (min(a[0], b[0]), max(a[1], b[1]))
                for a, b in zip(previous.levels, request.levels, strict=True)
            )
            joined[-1] = reading.Request(previous.intent, previous.at, levels)
            continue
        joined.append(request)
    return joined


class _Deciding:
    """The writes and refusals of one ticket, request by request."""

    def __init__(
        self,
        text: str,
        customer: dict[str, Any],
        orders: list[dict[str, Any]],
        products: dict[str, dict[str, Any]],
    ) -> None:
        self.text, self.customer, self.orders, self.products = text, customer, orders, products
        self.withdrawn = reading.withdrawn_order_ids(text)
        self.actions: list[Action] = []
        self.declined: list[Declined] = []
        self.seen_orders: list[str] = []  # orders the requests were about
        self.asked: list[str] = []  # orders a question was about

    def decide(self, request: reading.Request) -> None:
        handler = {
            "cancel": self.cancel,
            "return": self.return_items,
            "change_items": self.change_items,
            "order_address": self.order_address,
            "profile_address": self.profile_address,
            "payment": self.payment,
        }[request.intent]
        handler(request)

    def _decline(
        self, request: reading.Request, why: str, order_id: str | None = None, detail: str = ""
    ) -> None:
        intent = INTENT_OF[request.intent]
        if not any(d.intent == intent and d.why == why for d in self.declined):
            self.declined.append(Declined(intent, why, order_id, detail))

    def _orders(
        self,
        request: reading.Request,
        statuses: Sequence[str],
        skip: Sequence[tuple[int, int]] = (),
    ) -> list[dict[str, Any]]:
        found = choosing.choose_orders(
            self.text, request, self.orders, statuses, self.withdrawn, skip, self.products
        )
        if found.why:
            self._decline(request, found.why)
            if found.why.startswith("wrong_status"):
                self.seen_orders.extend(
                    o["order_id"]
                    for o in self._described(request)
                    if o["order_id"] not in self.seen_orders
                )
        else:
            self.seen_orders.extend(o["order_id"] for o in found.records)
        return found.records

    def _described(self, request: reading.Request) -> list[dict[str, Any]]:
        every = ("pending", "pending (item modified)", "processed", "delivered", "cancelled",
                 "return requested", "exchange requested")  # fmt: skip
        found = choosing.choose_orders(self.text, request, self.orders, every, self.withdrawn)
        return found.records

    def cancel(self, request: reading.Request) -> None:
        for order in self._orders(request, ("pending",)):
            reason = None
            for span in request.levels:
                reason = reading.cancel_reason(choosing.text_of(self.text, span))
                if reason is not None:
                    break
            if reason is None:
                self._decline(request, "cancel_reason", order["order_id"])
                continue
            refund = _paid(order)
            method = original_method(order)
            where = method_label(self.customer, method) if method else "the original payment method"
            timing = (
                "at once"
                if method and method.startswith("gift_card")
                else "within 5-7 business days"
            )
            self.actions.append(
                Action(
                    "cancel_pending_order",
                    {"order_id": order["order_id"], "reason": reason},
                    order["order_id"],
                    f"cancel order {order['order_id']} ({items_text(order['items'])}), reason "
                    f"'{reason}'; ${refund:.2f} goes back to {where} {timing}; the order is "
                    "then cancelled",
                    refund,
                )
            )

    def return_items(self, request: reading.Request) -> None:
        for order in self._orders(request, ("delivered",)):
            items = choosing.choose_items(self.text, request, order, self.products)
            if items.why:
                self._decline(request, items.why, order["order_id"])
                continue
            refund_to = choosing.payment_for(
                self.text, request, self.customer, order, "refund_method"
            )
            if refund_to.why:
                self._decline(request, refund_to.why, order["order_id"])
                continue
            method = refund_to.records[0]
            paid_with = original_method(order)
            if method != paid_with and not method.startswith("gift_card"):
                detail = (
                    f"Order {order['order_id']} was paid with "
                    f"{method_label(self.customer, paid_with)}."
                    if paid_with
                    else ""
                )
                self._decline(request, "refund_not_allowed", order["order_id"], detail)
                continue
            amount = sum((Decimal(str(i["price"])) for i in items.records), Decimal("0"))
            self.actions.append(
                Action(
                    "return_delivered_order_items",
                    {
                        "order_id": order["order_id"],
                        "item_ids": [i["item_id"] for i in items.records],
                        "payment_method_id": method,
                    },
                    order["order_id"],
                    f"return {items_text(items.records)} from order {order['order_id']}; "
                    f"${amount:.2f} goes back to {method_label(self.customer, method)}, and you "
                    "will get an email on how to send the items back; the order's status is "
                    "then 'return requested'",
                    amount,
                )
            )

    def change_items(self, request: reading.Request) -> None:
        for order in self._orders(request, ("delivered", "pending")):
            items = choosing.choose_items(self.text, request, order, self.products)
            if items.why:
                self._decline(request, items.why, order["order_id"])
                continue
            if _other_product(self.text, request, order, self.products):
                self._decline(request, "other_product", order["order_id"])
                continue
            new = choosing.choose_variants(
                self.text, request, items.records, self.products, self.orders
            )
            if new.why:
                vague = new.why == "no_variant" and not _names_an_option(
                    self.text, request, items.records, self.products
                )
                self._decline(request, "vague" if vague else new.why, order["order_id"])
                continue
            variants = {
                v["item_id"]: v for p in self.products.values() for v in p["variants"].values()
            }
            difference = sum(
                (
                    Decimal(str(variants[n]["price"])) - Decimal(str(i["price"]))
                    for i, n in zip(items.records, new.records, strict=True)
                ),
                Decimal("0"),
            )
            pays = choosing.payment_for(
                self.text, request, self.customer, order, "payment_for_difference"
            )
            if pays.why and difference == 0 and original_method(order):
                # No money changes hands: the order's own method is named for the record only.
                pays = Found([original_method(order)])
            if pays.why:
                self._decline(request, pays.why, order["order_id"])
                continue
            method = pays.records[0]
            balance = self.customer["payment_methods"].get(method, {}).get("balance")
            if balance is not None and difference > Decimal(str(balance)):
                detail = (
                    f"The change costs ${difference:.2f} more; "
                    f"the card holds ${Decimal(str(balance)):.2f}."
                )
                self._decline(request, "gift_card_balance", order["order_id"], detail)
                continue
            delivered = order["status"] == "delivered"
            changes = "; ".join(
                f"{item_text(i)} to {item_text({**i, 'options': variants[n]['options']})}"
                for i, n in zip(items.records, new.records, strict=True)
            )
            money = (
                f"the price difference of ${difference:.2f} is charged to "
                if difference > 0
                else f"the price difference of ${-difference:.2f} is refunded to "
                if difference < 0
                else "there is no price difference; "
            )
            verb = "exchange" if delivered else "change"
            paid = method_label(self.customer, method) if difference else ""
            status = "exchange requested" if delivered else "pending (item modified)"
            summary = f"{verb} on order {order['order_id']}: {changes}; {money}{paid}"
            summary = f"{summary.rstrip('; ')}; the order's status is then '{status}'"
            self.actions.append(
                Action(
                    "exchange_delivered_order_items" if delivered else "modify_pending_order_items",
                    {
                        "order_id": order["order_id"],
                        "item_ids": [i["item_id"] for i in items.records],
                        "new_item_ids": new.records,
                        "payment_method_id": method,
                    },
                    order["order_id"],
                    summary,
                )
            )

    def order_address(self, request: reading.Request) -> None:
        address, skip = choosing.address_for(self.text, request, self.customer, self.orders)
        orders = self._orders(request, PENDING, skip)
        if orders and address is None:
            self._decline(request, "no_address", orders[0]["order_id"])
            return
        for order in orders:
            assert address is not None
            self.actions.append(
                Action(
                    "modify_pending_order_address",
                    {"order_id": order["order_id"], **address},
                    order["order_id"],
                    f"ship order {order['order_id']} to {address_text(address)} (the order "
                    f"stays {order['status']})",
                )
            )

    def profile_address(self, request: reading.Request) -> None:
        address, _ = choosing.address_for(
            self.text, request, self.customer, self.orders, for_profile=True
        )
        if address is None:
            self._decline(request, "no_address")
            return
        self.actions.append(
            Action(
                "update_customer_address",
                {"customer_id": self.customer["customer_id"], **address},
                None,
                f"change the address on your account to {address_text(address)}",
            )
        )
        sentence = reading.folded(choosing.text_of(self.text, request.levels[1]))
        if choosing.ALL_ORDERS.search(sentence) or re.search(
            r"\borders? too\b|\beverywhere\b", sentence
        ):
            self.order_address(reading.Request("order_address", request.at, request.levels))

    def payment(self, request: reading.Request) -> None:
        for order in self._orders(request, ("pending",)):
            current = original_method(order)
            named = []
            for span in request.levels[:3]:
                named = [
                    m
                    for m in choosing.named_methods(
                        choosing.text_of(self.text, span), self.customer
                    )
                    if m != current
                ]
                if named:
                    break
            if len(named) != 1:
                self._decline(request, "no_payment_method", order["order_id"])
                continue
            method = named[0]
            balance = self.customer["payment_methods"][method].get("balance")
            if balance is not None and Decimal(str(balance)) < Decimal(str(order["total"])):
                detail = (
                    f"The order's total is ${Decimal(str(order['total'])):.2f}; "
                    f"the card holds ${Decimal(str(balance)):.2f}."
                )
                self._decline(request, "gift_card_balance", order["order_id"], detail)
                continue
            was = f" instead of {method_label(self.customer, current)}" if current else ""
            self.actions.append(
                Action(
                    "modify_pending_order_payment",
                    {"order_id": order["order_id"], "payment_method_id": method},
                    order["order_id"],
                    f"pay order {order['order_id']} with "
                    f"{method_label(self.customer, method)}{was} (the order stays pending)",
                )
            )

    def look_up(self, request: reading.Request) -> None:
        """The orders a question is about ("has my toothbrush shipped?"), for the facts."""
        for order in self._described(request):
            if order["order_id"] not in self.asked:
                self.asked.append(order["order_id"])

    def facts(self, found: Triage) -> list[str]:
        """What the reply may state: each order the message is about (its status, tracking,
        total), and what the store has of a product it asks about."""
        own = {o["order_id"]: o for o in self.orders}
        named = [o for o in found.order_ids if o in own]
        # An order a write changes is told by that write; its state from before would be stale.
        # A new payment method or address leaves its items and status as they are.
        unchanged = ("modify_pending_order_payment", "modify_pending_order_address")
        acted = {a.order_id for a in self.actions if a.tool not in unchanged}
        about = list(
            dict.fromkeys(
                [*(o for o in [*named, *self.seen_orders] if o not in acted), *self.asked]
            )
        )
        if not about and ("order_status" in found.intents or not self.actions):
            about = _orders_described(self.text, self.orders) or (
                list(own) if "order_status" in found.intents else []
            )
        elif "order_status" in found.intents:
            # "How much was the laptop order? Has the wall clock shipped?": each order asked about
            about += [o for o in _orders_described(self.text, self.orders) if o not in about]
        lines = [order_fact(own[o]) for o in about if o in own]
        lowered = reading.folded(self.text)
        if RANGE_QUESTION.search(lowered):
            names = [p["name"] for p in self.products.values()]
            for span in catalogue.product_spans(self.text, names):
                for product in self.products.values():
                    if product["name"].lower() in span.names:
                        fact = product_fact(product)
                        if fact not in lines:
                            lines.append(fact)
        return lines


def _orders_described(text: str, orders: list[dict[str, Any]]) -> list[str]:
    names = sorted({i["name"] for o in orders for i in o["items"]})
    mentioned = catalogue.product_spans(text, names)
    return [
        o["order_id"]
        for o in orders
        if mentioned
        and any(any(i["name"].lower() in m.names for i in o["items"]) for m in mentioned)
    ]


def _names_an_option(
    text: str,
    request: reading.Request,
    items: list[dict[str, Any]],
    products: Mapping[str, Any],
) -> bool:
    """Whether the request's words name any option value, or a step ("one size up"), of its
    items' products, or an option by name ("a different colour")."""
    words = choosing.text_of(text, request.levels[2])
    if catalogue.step_spans(words) or re.search(
        r"\b(?:size|colou?r|version|model|option|style|capacity)\b", reading.folded(words)
    ):
        return True
    return any(
        catalogue.value_spans(words, products[i["product_id"]])
        for i in items
        if i["product_id"] in products
    )


def _other_product(
    text: str, request: reading.Request, order: dict[str, Any], products: Mapping[str, Any]
) -> bool:
    """Whether the request asks to change an item into another kind of product ("exchange the
    yoga mat for a water bottle"), which the policy does not allow."""
    words = reading.folded(choosing.text_of(text, request.clause))
    names = [p["name"] for p in products.values()]
    own = {i["name"].lower() for i in order["items"]}
    clause = choosing.text_of(text, request.clause)
    values = [
        v
        for i in order["items"]
        if i["product_id"] in products
        for v in catalogue.value_spans(clause, products[i["product_id"]])
    ]
    for span in catalogue.product_spans(clause, names):
        if any(v.start < span.end and span.start < v.end for v in values):
            continue  # "the version with the laptop compartment": an option, not a laptop
        before = words[max(0, span.start - 30) : span.start]
        # "for a pair of your sneakers", "into one of your desk lamps"
        if not span.names & own and re.search(
            r"\b(?:for|to|into|with)\b(?: (?:a|an|the|some|one|pair|set|of|your|those|these))*\s*$",
            before,
        ):
            return True
    return False


def _merged(
    actions: list[Action], orders: list[dict[str, Any]], products: Mapping[str, Any]
) -> list[Action]:
    """One write per order for item changes and returns (the CRM allows one such call per
    order), and the same write asked twice made once."""
    merged: list[Action] = []
    for action in actions:
        same = next(
            (
                m
                for m in merged
                if m.tool == action.tool
                and m.order_id == action.order_id
                and action.tool in (*ITEM_TOOLS, "return_delivered_order_items")
            ),
            None,
        )
        if same is None:
            if action.tool in (a.tool for a in merged) and any(
                a.arguments == action.arguments for a in merged
            ):
                continue
            merged.append(action)
            continue
        if same.arguments.get("payment_method_id") != action.arguments.get("payment_method_id"):
            continue
        for key in ("item_ids", "new_item_ids"):
            if key in same.arguments:
                same.arguments[key] = [*same.arguments[key], *action.arguments[key]]
        same.summary += "; " + action.summary.split(": ", 1)[-1]
        same.amount += action.amount
    return merged


def with_approval(result: Plan, orders: list[dict[str, Any]], limits: Limits) -> Plan:
    """``result``, marked for a human's approval where the policy asks for one: refunds that
    add up to more than the threshold, or any refund for a VIP."""
    refunds = [a for a in result.actions if a.tool in REFUNDING]
    if not refunds:
        return result
    spend = lifetime_spend(orders)
    amount = sum((a.amount for a in refunds), Decimal("0"))
    if amount > limits.approval_threshold:
        result.needs_approval = f"refund of ${amount:.2f} is above ${limits.approval_threshold}"
    elif spend >= limits.vip_lifetime_spend:
        result.needs_approval = f"VIP customer (lifetime spend ${spend:.2f})"
    return result


def approval_request(planned: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The action a human is asked to approve for a plan: its one write as it is, or, for
    several, ``orchestrator.plan`` with every write in order."""
    actions = planned["actions"]
    if len(actions) == 1:
        return str(actions[0]["tool"]), dict(actions[0]["arguments"])
    return "orchestrator.plan", {
        "actions": [{"tool": a["tool"], "arguments": a["arguments"]} for a in actions]
    }


def proposed_plan(
    proposals: list[dict[str, Any]],
    found: Triage,
    customer: dict[str, Any] | None,
    orders: list[dict[str, Any]],
    limits: Limits,
) -> Plan:
    """A model's proposed writes, checked the way the offline policy's own are: a human's
    matter, an unidentified customer or another customer's record is no action; a refund is
    priced from the CRM's facts, not the model's words, and gated for approval."""
    if found.handover:
        return Plan(blocked=f"handover:{found.handover}")
    if not proposals:
        return Plan(blocked="no_action_needed")
    if customer is None:
        return Plan(blocked="unidentified")
    own = {o["order_id"]: o for o in orders}
    result = Plan()
    for proposal in proposals:
        tool, arguments = proposal["tool"], dict(proposal["arguments"])
        order = own.get(arguments.get("order_id", ""))
        if ("order_id" in arguments and order is None) or arguments.get(
            "customer_id", customer["customer_id"]
        ) != customer["customer_id"]:
            return Plan(blocked="not_their_order")  # never act beside another customer's order
        amount = Decimal("0")
        if order is not None and tool == "cancel_pending_order":
            amount = _paid(order)
        elif order is not None and tool == "return_delivered_order_items":
            prices = {i["item_id"]: Decimal(str(i["price"])) for i in order["items"]}
            amount = sum(
                (prices.get(i, Decimal("0")) for i in arguments.get("item_ids", [])), Decimal("0")
            )
        result.actions.append(
            Action(
                tool,
                arguments,
                order["order_id"] if order else None,
                f"{tool.replace('_', ' ')} ({', '.join(f'{k}={v}' for k, v in arguments.items())})",
                amount,
            )
        )
        if order is not None:
            result.facts.append(order_fact(order))
    return with_approval(result, orders, limits)


def _paid(order: dict[str, Any]) -> Decimal:
    """What the customer paid for the order, less what was refunded."""
    total = Decimal("0")
    for entry in order["payment_history"]:
        sign = 1 if entry["transaction_type"] == "payment" else -1
        total += sign * Decimal(str(entry["amount"]))
    return total
