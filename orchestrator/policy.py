"""The offline policy: deterministic rules that really handle a retail support ticket.

It decides what a model would when no model is configured: the intent and priority of a ticket,
who the customer is, which of *their* orders and items it is about, the CRM action that
follows from the intent, the order's real state and the store's policy, whether a human must
approve it, and a reply built from the evidence gathered (knowledge-base passages, CRM facts),
with citations. Nothing here does I/O: the graph's nodes fetch, this module decides.

The rules follow the demo store's policy (``clients/demo_data/store/policy.md``), which is the
tau2-bench retail policy in short: only pending orders are cancelled or modified, only delivered
ones returned or exchanged, refunds go to the original payment method or a gift card, and a
refund above a threshold, or any refund for a VIP, waits for a human's approval.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ORDER_ID = re.compile(r"#?\b(W\d{7})\b", re.I)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
ZIP = re.compile(r"\b(\d{5})(?:-\d{4})?\b")
NAME = re.compile(
    r"\b(?:my name is|this is|i am|i'm|it'?s)\s+([A-Z][a-z'-]+)\s+([A-Z][a-z'-]+)"
    r"|^(?:(?:hi|hey|hello)\W+)?([A-Z][a-z'-]+)\s+([A-Z][a-z'-]+)\s+here\b"
    r"|\b([A-Z][a-z'-]+)\s+([A-Z][a-z'-]+),?\s+(?:zip|zip code)\b",
    re.I | re.M,
)
STREET = (
    r"\d+\s+[\w .'-]+?\s(?:st|street|ave|avenue|rd|road|ln|lane|blvd|boulevard|dr|drive|way|"
    r"ct|court|pl|place|ter|terrace|pkwy|parkway|cir|circle|hwy|highway)\.?"
    r"(?:\s+(?:n|s|e|w|ne|nw|se|sw)\b\.?)?"
)
ADDRESS = re.compile(
    rf"(?P<address1>{STREET})\s*,?\s*(?:(?P<address2>(?:apt|apartment|suite|unit|#)\.?\s*[\w-]+)\s*,?\s*)?"
    r"(?P<city>[A-Za-z][A-Za-z .'-]+?)\s*,?\s+(?P<state>[A-Z]{2})\s*,?\s*(?P<zip>\d{5})",
    re.I,
)

# Intent cues, as regular expressions over the lower-cased text. Typos customers make often
# ("cancle", "retrun", "exhange") are spelled out rather than fuzzy-matched: deterministic.
CUES: dict[str, str] = {
    "cancel": r"\bcan(?:c|cc)(?:el|le|ell)\w*|\bdon'?t (?:want|need) (?:it|this|the|that|my)"
    r"|\bno longer (?:need|want)|\bby mistake|\bchanged my mind",
    "return": r"\bret(?:urn|run|rn)\w*|\bsend (?:it|them|this|these|the \w+) back|\bmoney back"
    r"|\brefund (?:for|on) (?:the|my|this)",
    "exchange": r"\bexc?h?(?:ang|nag)\w*|\bswap\w*|\b(?:different|another|other|bigger|smaller)"
    r" (?:size|colou?r|one|model|version)",
    "modify_address": r"\b(?:ship|send|deliver)\w* (?:it |them |the order |my order |this "
    r"order )?to (?:a |my )?(?:new|different|another|the new|this)|\bshipping address"
    r"|\bwrong address|\bdelivery address"
    r"|\b(?:ship|send|deliver)\w* (?:[\w#']+ ){0,6}to (?:my |our |the |a )?[\w']+ "
    r"(?:place|house|home|address|apartment|office|work)",
    "update_profile_address": r"\bi(?:'ve| have)? (?:just )?moved\b|\bupdate (?:my |the )?"
    r"(?:default |profile |account |home )?address|\baddress (?:on|in) (?:my )?(?:account|profile)",
    "modify_payment": r"\bpayment method|\bpay (?:with|using|by|for it with)|\bcharge (?:it |this |"
    r"the order )?to\b|\buse my (?:paypal|gift card|card|visa|mastercard)(?![^.]*\bdiff)"
    r"|\bswitch (?:the )?payment(?! from)|\bswitch (?:it|the order|this) to my"
    r"|\bcharge my (?:visa|mastercard|amex|discover|card|credit card|paypal|gift card)",
    "order_status": r"\bwhere(?:'s| is) my|\bstatus\b|\btrack\w*|\bhas(?:n'?t| not) (?:arrived|"
    r"shipped|come)|\bwhen will\b|\bnot (?:yet )?(?:arrived|received)|\bstill waiting"
    r"|\bwhat'?s happening|\bany update|\bhaven'?t heard",
    "kb_question": r"\bhow (?:do|long|can|much|does)|\bwhat(?:'s| is| are) (?:your|the)|"
    r"\bdo you\b|\bcan i\b|\bpolicy\b|\bis it possible",
}
# An item change asked for in passing ("in clear instead of black"): counts only when nothing
# stronger is asked.
WEAK_EXCHANGE = re.compile(
    r"\binstead\b|\bswitch (?:it |them )?from\b|\bmake (?:it|them) (?:the |a )?"
    r"|\bchange (?:the \w+ |it |them )?(?:to|for|from)\b|\bi need (?:size|a size)",
    re.I,
)
# A cue in a sentence that reports or asks about the past, or supposes, is not a request: "an
# order was cancelled", "if an order gets cancelled", "I'd rather not cancel", "what's happening
# with my exchange?".
NOT_A_REQUEST = re.compile(
    r"\b(?:was|were|been|got|gets|getting|is|are|already)\s+\w*$"
    r"|\b(?:not|n't|never|rather not|without)\s+(?:\w+\s+){0,2}$"
)
STATUS_QUESTION = re.compile(
    r"^\s*(?:(?:hi|hello|hey)\b[,!]?\s*)?(?:what|where|when|has|have|did|is|are|why|any)\b[^?]*\?",
    re.I,
)
ANGRY = re.compile(
    r"\b(?:furious|ridiculous|unacceptable|worst|disgusting|scam|angry|livid|pathetic|"
    r"incompetent|outrageous|useless|fed up|sick of|joke)\b|!!!",
    re.I,
)
HANDOVER: dict[str, re.Pattern[str]] = {
    "legal": re.compile(r"\b(?:lawyer|attorney|sue|suing|legal action|court|small claims)\b", re.I),
    "chargeback": re.compile(r"\bcharge ?back|\bdispute (?:the|this) charge", re.I),
    "safety": re.compile(
        r"\b(?:injur\w*|burn(?:ed|t|s)?|caught fire|fire hazard|smok\w*|shock(?:ed)?|unsafe|"
        r"hospital|hurt)\b",
        re.I,
    ),
    "fraud": re.compile(
        r"\b(?:fraud\w*|stolen|hacked|unauthori[sz]ed|did(?:n'?t| not) (?:place|make) (?:this|"
        r"that|the) order)",
        re.I,
    ),
}
INJECTION = re.compile(
    r"\b(?:ignore|disregard) (?:all |any |the )?(?:previous|prior|above|your)? ?"
    r"(?:instructions|rules|policy)|\byou are now\b|\bsystem prompt\b",
    re.I,
)
ACTIONABLE = (
    "cancel",
    "return",
    "exchange",
    "modify_address",
    "modify_payment",
    "update_profile_address",
)
REFUNDING = ("cancel_pending_order", "return_delivered_order_items")
ALL_ITEMS = re.compile(
    r"\b(?:everything|all (?:of )?(?:the |my )?(?:items|things)|whole order|"
    r"entire order|the order|the whole thing)\b",
    re.I,
)


@dataclass(frozen=True)
class Limits:
    """The store's thresholds, from settings."""

    approval_threshold: Decimal = Decimal("250")  # a refund above this waits for a human
    vip_lifetime_spend: Decimal = Decimal("1500")  # customers who spent this much are VIPs
    approval_expires_seconds: int = 24 * 3600  # undecided this long: expired, no action


CATEGORY = {
    "order_status": "orders",
    "cancel": "orders",
    "modify_address": "orders",
    "modify_payment": "orders",
    "modify_items": "orders",
    "return": "returns",
    "exchange": "returns",
    "update_profile_address": "account",
    "kb_question": "question",
    "complaint": "complaint",
    "other": "other",
}


@dataclass
class Triage:
    intent: str
    intents: list[str]  # every intent the message shows, first mentioned first
    priority: str
    sentiment: str
    handover: str | None  # why a human must take it: legal, chargeback, safety, fraud, angry
    order_ids: list[str]
    emails: list[str]
    zip: str | None
    name: tuple[str, str] | None
    injection: bool
    confidence: float

    def as_state(self) -> dict[str, Any]:
        return {
            "intent": self.intent,
            "category": CATEGORY[self.intent],
            "intents": self.intents,
            "priority": self.priority,
            "sentiment": self.sentiment,
            "handover": self.handover,
            "order_ids": self.order_ids,
            "emails": self.emails,
            "zip": self.zip,
            "name": list(self.name) if self.name else None,
            "injection": self.injection,
            "confidence": self.confidence,
        }


def triage(text: str) -> Triage:
    """Intent, priority, sentiment and the entities of a customer's message."""
    lowered = text.lower().replace("’", "'")
    # A subject line is a title: its words count only when the message itself asks nothing.
    _subject, _, body = lowered.partition("\n\n")
    asks = any(re.search(cue, body) for cue in CUES.values())
    searched = body if body and asks else lowered
    offset = len(lowered) - len(searched)
    found: list[tuple[int, str]] = []
    for intent, cue in CUES.items():
        for match in re.finditer(cue, searched):
            if intent in ACTIONABLE and not _requested(lowered, offset + match.start(), intent):
                continue
            found.append((offset + match.start(), intent))
            break
    if not any(i in ACTIONABLE for _, i in found) and (weak := WEAK_EXCHANGE.search(searched)):
        found.append((offset + weak.start(), "exchange"))
    found.sort()
    intents = [intent for _, intent in found]
    actionable = [i for i in intents if i in ACTIONABLE]
    if (
        actionable
        and actionable[0] == "update_profile_address"
        and ADDRESS.search(text)
        and ORDER_ID.search(text)
        and not re.search(r"\b(?:account|profile)\b", lowered)
    ):
        actionable[0] = "modify_address"  # a new address for an order, not for the account
    if actionable:
        intent = actionable[0]
    elif "order_status" in intents:
        intent = "order_status"
    elif intents:
        intent = intents[0]
    else:
        intent = "other"
    angry = bool(ANGRY.search(text)) or _shouting(text)
    handover = next((why for why, cue in HANDOVER.items() if cue.search(text)), None)
    if handover is None and angry:
        handover = "angry"
    if (angry or handover) and intent == "other":
        intent = "complaint"  # a threat of lawyers or a chargeback asks for nothing else
    priority = (
        "urgent"
        if handover in ("legal", "safety", "fraud")
        else "high"
        if handover
        else "low"
        if intent in ("kb_question", "other")
        else "normal"
    )
    name = NAME.search(text)
    return Triage(
        intent=intent,
        intents=intents,
        priority=priority,
        sentiment="angry" if angry else "neutral",
        handover=handover,
        order_ids=list(dict.fromkeys(f"#{m.upper()}" for m in ORDER_ID.findall(text))),
        emails=list(dict.fromkeys(e.lower() for e in EMAIL.findall(text))),
        zip=_zip(text),
        name=_name(name),
        injection=bool(INJECTION.search(text)),
        confidence=1.0 if len(actionable) == 1 else 0.6 if actionable else 0.8,
    )


def _name(match: re.Match[str] | None) -> tuple[str, str] | None:
    if match is None:
        return None
    first, last = [g for g in match.groups() if g][:2]
    return first.title(), last.title()


def _zip(text: str) -> str | None:
    """The customer's zip code: the one they call their zip, else the first one not inside an
    address they give."""
    said = re.search(r"\bzip(?: code)?(?: is)?[:\s]+(\d{5})\b", text, re.I)
    if said:
        return said.group(1)
    addresses = [m.span() for m in ADDRESS.finditer(text)]
    for match in ZIP.finditer(text):
        if not any(a <= match.start() < b for a, b in addresses):
            return match.group(1)
    return None


def _requested(lowered: str, at: int, intent: str) -> bool:
    """Whether the cue at ``at`` asks for something, rather than reporting or asking about it;
    a payment method named for a price difference is not a change of the order's payment."""
    start = max(lowered.rfind(mark, 0, at) for mark in (".", "!", "?", "\n")) + 1
    end = min(
        (i for i in (lowered.find(m, at) for m in (".", "!", "?", "\n")) if i >= 0),
        default=len(lowered),
    )
    sentence = lowered[start : end + 1]
    if NOT_A_REQUEST.search(lowered[start:at]):
        return False
    if intent == "modify_payment" and re.search(r"\bdiff|price is different", sentence):
        return False
    return not STATUS_QUESTION.match(sentence)


def _shouting(text: str) -> bool:
    words = [w for w in re.findall(r"[A-Za-z]{3,}", text)]
    return len(words) >= 6 and sum(w.isupper() for w in words) / len(words) > 0.3


@dataclass
class Plan:
    """What to do about a ticket: a CRM write with its exact arguments, or none and why."""

    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    order_id: str | None = None
    amount: Decimal = Decimal("0")  # money going back to the customer
    summary: str = ""  # one line a human approver or the customer reads
    needs_approval: str | None = None  # why a human must approve it first
    blocked: str | None = None  # why no action: the reply explains it
    facts: list[str] = field(default_factory=list)  # what the reply may state and cite

    def as_state(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "arguments": self.arguments,
            "order_id": self.order_id,
            "amount": str(self.amount),
            "summary": self.summary,
            "needs_approval": self.needs_approval,
            "blocked": self.blocked,
            "facts": self.facts,
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
    """The action the ticket calls for under the store's policy, or why there is none.

    ``orders`` are the customer's orders as ``get_order`` returns them plus ``total``;
    ``products`` the products of their items, by product id, as ``get_product`` returns them.
    """
    if found.handover:
        return Plan(blocked=f"handover:{found.handover}")
    if customer is None:
        if found.intent == "kb_question" and not found.order_ids:
            return Plan(blocked="no_action_needed")  # a general question: anyone may ask it
        return Plan(blocked="unidentified")
    own = {o["order_id"]: o for o in orders}
    foreign = [o for o in found.order_ids if o not in own]
    if foreign:
        # Never act on, or say anything of, an order that is not this customer's.
        return Plan(blocked="not_their_order")
    if found.intent == "update_profile_address":
        address = parse_address(text)
        if address is None:
            return Plan(blocked="no_address")
        return Plan(
            tool="update_customer_address",
            arguments={"customer_id": customer["customer_id"], **address},
            summary="update the address on the customer's profile",
        )
    if found.intent not in ACTIONABLE:
        # Nothing to do, but what the customer asks about is worth saying: the orders they
        # name, or, asking where their order is without naming it, each of theirs.
        named = [own[o] for o in found.order_ids if o in own]
        if not named and found.intent == "order_status":
            named = list(own.values())
        return Plan(blocked="no_action_needed", facts=[order_fact(o) for o in named])
    statuses = {
        "cancel": ("pending",),
        "modify_address": ("pending", "pending (item modified)"),
        "modify_payment": ("pending", "pending (item modified)"),
        "return": ("delivered",),
        "exchange": ("delivered", "pending"),
    }[found.intent]
    order, why = choose_order(found, text, list(own.values()), statuses)
    if order is None:
        return Plan(blocked=why)
    intent = found.intent
    if intent == "exchange" and order["status"] == "pending":
        intent = "modify_items"
    facts = [order_fact(order)]
    original = next(
        (
            p["payment_method_id"]
            for p in order["payment_history"]
            if p["transaction_type"] == "payment"
        ),
        None,
    )
    if intent == "cancel":
        refund = _paid(order)
        reason = "ordered by mistake" if "mistak" in text.lower() else "no longer needed"
        result = Plan(
            tool="cancel_pending_order",
            arguments={"order_id": order["order_id"], "reason": reason},
            order_id=order["order_id"],
            amount=refund,
            summary=f"cancel order {order['order_id']} ({reason}), refunding ${refund:.2f}",
            facts=facts,
        )
    elif intent in ("return", "exchange", "modify_items"):
        items, why = choose_items(text, order)
        if not items:
            return Plan(blocked=why, order_id=order["order_id"], facts=facts)
        if intent == "return":
            method = refund_method(text, customer, original)
            if method is None:
                return Plan(blocked="refund_method", order_id=order["order_id"], facts=facts)
            amount = sum((Decimal(str(i["price"])) for i in items), Decimal("0"))
            result = Plan(
                tool="return_delivered_order_items",
                arguments={
                    "order_id": order["order_id"],
                    "item_ids": [i["item_id"] for i in items],
                    "payment_method_id": method,
                },
                order_id=order["order_id"],
                amount=amount,
                summary=f"return {_names(items)} from order {order['order_id']}, refunding "
                f"${amount:.2f} to {method}",
                facts=facts,
            )
        else:
            # Of the items the message names, those it asks an available change of ("the green
            # speaker" may only describe the order).
            asked = [i for i in items if choose_variant(text, i, products.get(i["product_id"]))]
            items = asked or items
            new_ids = []
            for item in items:
                new = choose_variant(text, item, products.get(item["product_id"]))
                if new is None:
                    return Plan(blocked="no_variant", order_id=order["order_id"], facts=facts)
                new_ids.append(new)
            tool = (
                "exchange_delivered_order_items"
                if intent == "exchange"
                else "modify_pending_order_items"
            )
            result = Plan(
                tool=tool,
                arguments={
                    "order_id": order["order_id"],
                    "item_ids": [i["item_id"] for i in items],
                    "new_item_ids": new_ids,
                    "payment_method_id": named_payment_method(text, customer, original) or original,
                },
                order_id=order["order_id"],
                summary=f"{'exchange' if intent == 'exchange' else 'change'} {_names(items)} "
                f"on order {order['order_id']} for the option asked for",
                facts=facts,
            )
    elif intent == "modify_address":
        address = parse_address(text)
        if address is None:
            return Plan(blocked="no_address", order_id=order["order_id"], facts=facts)
        result = Plan(
            tool="modify_pending_order_address",
            arguments={"order_id": order["order_id"], **address},
            order_id=order["order_id"],
            summary=f"ship order {order['order_id']} to {address['address1']}, {address['city']}",
            facts=facts,
        )
    else:  # modify_payment
        chosen_method = named_payment_method(text, customer, original)
        if chosen_method is None:
            return Plan(blocked="no_payment_method", order_id=order["order_id"], facts=facts)
        balance = customer["payment_methods"][chosen_method].get("balance")
        if balance is not None and Decimal(str(balance)) < Decimal(str(order["total"])):
            return Plan(blocked="gift_card_balance", order_id=order["order_id"], facts=facts)
        result = Plan(
            tool="modify_pending_order_payment",
            arguments={"order_id": order["order_id"], "payment_method_id": chosen_method},
            order_id=order["order_id"],
            summary=f"pay order {order['order_id']} with {chosen_method}",
            facts=facts,
        )
    return with_approval(result, found, orders, limits)


def with_approval(
    result: Plan, found: Triage, orders: list[dict[str, Any]], limits: Limits
) -> Plan:
    """``result``, marked for a human's approval where the policy asks for one: a refund above
    the threshold, any refund of a VIP, a refund taken from a message that asks several things."""
    if result.tool not in REFUNDING:
        return result
    spend = lifetime_spend(orders)
    if result.amount > limits.approval_threshold:
        result.needs_approval = (
            f"refund of ${result.amount:.2f} is above ${limits.approval_threshold}"
        )
    elif spend >= limits.vip_lifetime_spend:
        result.needs_approval = f"VIP customer (lifetime spend ${spend:.2f})"
    elif found.confidence < 1.0:
        result.needs_approval = "the message asks for more than one thing"
    return result


def proposed_plan(
    proposal: dict[str, Any] | None,
    found: Triage,
    customer: dict[str, Any] | None,
    orders: list[dict[str, Any]],
    limits: Limits,
) -> Plan:
    """A model's proposed write, checked the way the offline policy's own are: a human's
    matter, an unidentified customer or another customer's record is no action; a refund is
    priced from the CRM's facts, not the model's words, and gated for approval."""
    if found.handover:
        return Plan(blocked=f"handover:{found.handover}")
    if proposal is None:
        return Plan(blocked="no_action_needed")
    if customer is None:
        return Plan(blocked="unidentified")
    tool, arguments = proposal["tool"], proposal["arguments"]
    own = {o["order_id"]: o for o in orders}
    order = own.get(arguments.get("order_id", ""))
    if "order_id" in arguments and order is None:
        return Plan(blocked="not_their_order")
    if arguments.get("customer_id", customer["customer_id"]) != customer["customer_id"]:
        return Plan(blocked="not_their_order")
    amount = Decimal("0")
    if order is not None and tool == "cancel_pending_order":
        amount = _paid(order)
    elif order is not None and tool == "return_delivered_order_items":
        prices = {i["item_id"]: Decimal(str(i["price"])) for i in order["items"]}
        amount = sum(
            (prices.get(i, Decimal("0")) for i in arguments.get("item_ids", [])), Decimal("0")
        )
    result = Plan(
        tool=tool,
        arguments=arguments,
        order_id=order["order_id"] if order else None,
        amount=amount,
        summary=f"{tool.replace('_', ' ')} ({', '.join(f'{k}={v}' for k, v in arguments.items())})",
        facts=[order_fact(order)] if order else [],
    )
    return with_approval(result, found, orders, limits)


def _paid(order: dict[str, Any]) -> Decimal:
    """What the customer paid for the order, less what was refunded."""
    total = Decimal("0")
    for entry in order["payment_history"]:
        sign = 1 if entry["transaction_type"] == "payment" else -1
        total += sign * Decimal(str(entry["amount"]))
    return total


def choose_order(
    found: Triage, text: str, orders: list[dict[str, Any]], statuses: tuple[str, ...]
) -> tuple[dict[str, Any] | None, str]:
    """The one order of the customer's the message is about, or why it is not clear: the first
    one it names in a state the intent allows, else the one whose items it describes best."""
    if found.order_ids:
        named = sorted(
            (o for o in orders if o["order_id"] in found.order_ids),
            key=lambda o: found.order_ids.index(o["order_id"]),
        )
        allowed = [o for o in named if o["status"] in statuses]
        if not allowed:
            return None, f"wrong_status:{named[0]['status']}" if named else "no_order"
        return allowed[0], ""
    candidates = [o for o in orders if o["status"] in statuses]
    lowered = text.lower()
    if len(candidates) > 1 and len({o["status"] for o in candidates}) > 1:
        if re.search(r"\b(?:hasn'?t|has not|not yet|before it) (?:shipped|ships|left)", lowered):
            candidates = [o for o in candidates if o["status"].startswith("pending")]
        elif re.search(r"\b(?:received|arrived|delivered|got it)\b", lowered):
            candidates = [o for o in candidates if o["status"] == "delivered"]
    scored = [(_described(lowered, o["items"]), o) for o in candidates]
    best = max((score for score, _ in scored), default=0)
    if best > 0:
        candidates = [o for score, o in scored if score == best]
    if len(candidates) == 1:
        return candidates[0], ""
    return None, "which_order" if candidates else "no_order"


def _mentions(lowered: str, item: dict[str, Any]) -> bool:
    """Whether the message names the item's product: its name, or the name's last word."""
    name = item["name"].lower()
    return name in lowered or bool(re.search(rf"\b{re.escape(name.split()[-1])}\b", lowered))


def _described(lowered: str, items: list[dict[str, Any]]) -> int:
    """How well the message describes some of ``items``: products named, and their options."""
    score = 0
    for item in items:
        if _mentions(lowered, item):
            score += 2 + sum(
                bool(re.search(rf"\b{re.escape(str(v).lower())}\b", lowered))
                for v in item["options"].values()
            )
    return score


def _kept(lowered: str, item: dict[str, Any]) -> bool:
    """Whether the customer says they keep this item ("I'm keeping the travel mug")."""
    full = item["name"].lower()
    name = f"(?:{re.escape(full)}|{re.escape(full.split()[-1])}s?)"
    return bool(
        re.search(
            rf"\bkeep(?:ing)?\b[^.!?]*\b{name}|\b{name}\b[^.!?]*\b(?:i(?:'ll| will)? keep|"
            rf"stays?|as is)\b",
            lowered,
        )
    )


def choose_items(text: str, order: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The items of the order the message is about; of several of one product, those whose
    options it names."""
    lowered = text.lower()
    named = [i for i in order["items"] if _mentions(lowered, i) and not _kept(lowered, i)]
    if named:
        chosen: list[dict[str, Any]] = []
        for product_id in dict.fromkeys(i["product_id"] for i in named):
            same = [i for i in named if i["product_id"] == product_id]
            scores = [_described(lowered, [i]) for i in same]
            chosen.extend(i for i, sc in zip(same, scores, strict=True) if sc == max(scores))
        ids = [i["item_id"] for i in chosen]
        return [i for i in order["items"] if i["item_id"] in ids], ""
    if len(order["items"]) == 1 or ALL_ITEMS.search(text):
        return list(order["items"]), ""
    return [], "which_items"


def choose_variant(text: str, item: dict[str, Any], product: dict[str, Any] | None) -> str | None:
    """The available variant of the item's product the message asks for: every option either
    named in the message or left as the item has it, as many as named changed."""
    if product is None:
        return None
    lowered = text.lower()
    found = []
    for variant in product["variants"].values():
        if variant["item_id"] == item["item_id"]:
            continue
        changed = [k for k, v in variant["options"].items() if item["options"].get(k) != v]
        if changed and all(
            re.search(rf"\b{re.escape(str(variant['options'][k]).lower())}\b", lowered)
            for k in changed
        ):
            found.append((len(changed), variant))
    if not found:
        return None
    most = max(n for n, _ in found)
    best = [v for n, v in found if n == most]
    if len(best) != 1 or not best[0]["available"]:
        return None
    return str(best[0]["item_id"])


def refund_method(text: str, customer: dict[str, Any], original: str | None) -> str | None:
    """Where a refund goes: the original payment method, or the customer's gift card when they
    ask for it; None when they ask for another method, which the policy does not allow."""
    methods: dict[str, dict[str, Any]] = customer["payment_methods"]
    if "gift card" in text.lower():
        cards = [m for m in methods if m.startswith("gift_card_")]
        if cards:
            return cards[0]
    asked = named_payment_method(text, customer, original)
    if asked is not None and not asked.startswith("gift_card_"):
        return None
    return original or str(next(iter(methods)))


def named_payment_method(
    text: str, customer: dict[str, Any], current: str | None = None
) -> str | None:
    """The one payment method of the customer's the message names, other than ``current``."""
    lowered = text.lower()
    methods: dict[str, dict[str, Any]] = customer["payment_methods"]
    named = []
    for method_id, method in methods.items():
        last_four = method.get("last_four")
        brand = str(method.get("brand", "")).lower()
        source = method.get("source", method_id.rsplit("_", 1)[0])
        if (
            (last_four and re.search(rf"\b{last_four}\b", lowered))
            or (source == "paypal" and "paypal" in lowered)
            or (source == "gift_card" and "gift card" in lowered)
            or (
                brand
                and re.search(rf"\b{re.escape(brand)}\b", lowered)
                and not re.search(r"\b\d{4}\b", lowered)
            )
        ):
            named.append(method_id)
    others = [m for m in named if m != current]
    if len(others) > 1:
        by_digits = [m for m in others if (d := methods[m].get("last_four")) and d in lowered]
        others = by_digits or others
    return others[0] if len(others) == 1 else None


def parse_address(text: str) -> dict[str, str] | None:
    match = ADDRESS.search(text)
    if match is None:
        return None
    return {
        "address1": match["address1"].strip(),
        "address2": (match["address2"] or "").strip(),
        "city": match["city"].strip(),
        "state": match["state"].upper(),
        "country": "USA",
        "zip": match["zip"],
    }


def order_fact(order: dict[str, Any]) -> str:
    items = ", ".join(
        f"{i['name']} ({', '.join(str(v) for v in i['options'].values())})" for i in order["items"]
    )
    tracking = [t for f in order.get("fulfillments", []) for t in f.get("tracking_id", [])]
    fact = f"Order {order['order_id']} is {order['status']}: {items}."
    if tracking:
        fact += f" Tracking number: {tracking[0]}."
    return fact


def _names(items: list[dict[str, Any]]) -> str:
    return ", ".join(i["name"] for i in items)


BLOCKED_REPLIES = {
    "unidentified": "To look into this I first need to confirm who you are: please reply with the "
    "email address on your account, or your full name and zip code.",
    "not_their_order": "I can only discuss and change orders on your own account, so I have not "
    "looked at or changed the order you mentioned. If it is yours, please write from the email "
    "address on that account.",
    "which_order": "You have more than one order this could be about. Please tell me the order "
    "number (it starts with #W) so I change the right one.",
    "no_order": "I could not find an order on your account that this applies to.",
    "which_items": "Please tell me which items of the order you mean.",
    "no_variant": "I could not find an available option matching what you asked for; please "
    "tell me the exact colour, size or other option you would like.",
    "no_address": "Please send the full new address (street, city, state and zip code).",
    "no_payment_method": "Please tell me which of the payment methods on your account to use.",
    "gift_card_balance": "Your gift card's balance does not cover the order's total, so I cannot "
    "move the whole payment to it; the order stays on its current payment method.",
    "refund_method": "Refunds go back to the payment method you paid with, or to a gift card on "
    "your account; I cannot send them to another card. Please tell me which of the two you "
    "prefer and I will go ahead.",
}
HANDOVER_REPLY = (
    "I'm sorry about this. I have passed your ticket to a member of our support team, who will "
    "get back to you personally; no changes have been made to your orders in the meantime."
)


def compose_reply(
    name: str | None,
    planned: dict[str, Any] | None,
    outcome: dict[str, Any] | None,
    approval: dict[str, Any] | None,
    passages: Sequence[Mapping[str, Any]],
    facts: list[str],
) -> dict[str, Any]:
    """The reply to the customer, grounded in what the run found: the action taken (or why
    none was), the CRM facts and the best knowledge-base passage, each cited."""
    lines = [f"Hello {name}," if name else "Hello,"]
    claims: str | None = None
    blocked = (planned or {}).get("blocked")
    if outcome and outcome.get("status") == "done":
        lines.append(f"I have done what you asked: {planned and planned['summary']}.")
        claims = planned["tool"] if planned else None
    elif outcome and outcome.get("status") == "failed":
        lines.append(
            "I tried to "
            + str(planned and planned["summary"])
            + ", but our system refused it: "
            + str(outcome.get("error", "")).split(": ", 2)[-1]
            + ". Nothing was changed."
        )
    elif approval and approval.get("status") in ("rejected", "expired"):
        lines.append(
            "I asked a support lead to approve this ("
            + str(planned and planned["summary"])
            + "), and it was "
            + ("not approved" if approval["status"] == "rejected" else "not decided in time")
            + ", so nothing was changed. A member of our team will follow up with you."
        )
    elif approval and approval.get("status") == "pending":
        lines.append(
            "This needs a support lead's approval before I can go ahead ("
            + str(planned and planned["summary"])
            + "). You will hear from us as soon as it is decided, usually within a business day."
        )
    elif blocked and blocked.startswith("handover"):
        lines.append(HANDOVER_REPLY)
    elif blocked and blocked.startswith("wrong_status:"):
        status = blocked.split(":", 1)[1]
        lines.append(
            f"That order is {status}, and our policy does not allow this change for an order "
            "in that state."
        )
    elif blocked in BLOCKED_REPLIES:
        lines.append(BLOCKED_REPLIES[blocked])
    lines.extend(facts)
    cites: list[str] = []
    if passages:
        top = passages[0]
        lines.append(
            f'From our help centre, "{top["title"]}" [{top["article_id"]}]: {_gist(top["text"])}'
        )
        cites.append(top["article_id"])
    lines.append("Best regards,\nSupportMesh support")
    return {"text": "\n\n".join(lines), "cites": cites, "claims": claims}


def _gist(text: str, limit: int = 320) -> str:
    body = " ".join(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if len(body) <= limit:
        return body
    cut = body[:limit].rsplit(". ", 1)[0]
    return cut + ("." if not cut.endswith(".") else "")


def check_reply(
    reply: dict[str, Any],
    outcome: dict[str, Any] | None,
    planned: dict[str, Any] | None,
    own_orders: list[str],
    cited_ids: list[str],
    facts: list[str],
) -> list[str]:
    """What is wrong with a reply, if anything: it must say something past its greeting, cite
    something it was given, name no order that is not the customer's and no email address at
    all (a reply never needs one, and one there came from somewhere it should not), and claim
    exactly the action taken."""
    problems = []
    text = reply["text"]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if not [p for p in paragraphs[1:] if not p.startswith("Best regards")]:
        problems.append("says nothing but a greeting")
    grounded = any(c in cited_ids for c in reply["cites"]) or any(f in text for f in facts)
    if not grounded and not (planned or {}).get("blocked"):
        problems.append("cites nothing it was given")
    for order_id in ORDER_ID.findall(text):
        if f"#{order_id.upper()}" not in own_orders:
            problems.append(f"names order #{order_id}, not the customer's")
    for email in EMAIL.findall(text):
        problems.append(f"names an email address, {email}")
    done = outcome is not None and outcome.get("status") == "done"
    taken = planned["tool"] if done and planned else None
    if reply.get("claims") != taken:
        problems.append(f"claims {reply.get('claims')!r} but the action taken was {taken!r}")
    return problems
