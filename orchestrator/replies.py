"""The reply to the customer, and the quality check that reads it before it is sent.

A reply says exactly what happened: every write done, with its specifics (the order, the items,
old option -> new, the refund or charge with its amount and where it goes, the new address),
every request not done and what is needed to do it, the facts asked for (a status, a tracking
number, what a product comes in). Payment methods are named as their owner knows them ("your
PayPal", "your Visa ending 1234"), never by an internal id. A help-centre passage is quoted
only when the customer asked a general question it answers; for anything else no citation
beats a wrong one. Plain text, whole sentences.

The quality check judges what the agent wrote, not the passage it quotes (whose example order
numbers are not the customer's).
"""

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from orchestrator.finding import EMAIL, ORDER_ID

DECLINED: dict[str, str] = {
    "which_order": "I could not tell which of your orders you mean. Please tell me the order "
    "number (it starts with #W).",
    "no_order": "I could not find an order on your account that this applies to.",
    "not_their_order": "I can only discuss and change orders on your own account, so I have "
    "not looked at or changed an order that is not yours.",
    "which_items": "Please tell me which items of the order you mean.",
    "no_variant": "I could not find an option of the product matching what you asked for; "
    "please tell me the exact colour, size or other option you would like.",
    "unavailable": "The option you asked for is not available at the moment, so I have not "
    "changed anything; please tell me if another option would do.",
    "other_product": "An item can only be exchanged for another option of the same product, "
    "not for a different product.",
    "no_address": "Please send the full address (street, city, state and zip code).",
    "no_payment_method": "Please tell me which of the payment methods on your account to use.",
    "payment_for_difference": "Please tell me which payment method on your account should "
    "pay, or receive, the price difference.",
    "gift_card_balance": "Your gift card's balance does not cover the amount, so I cannot use "
    "it for this.",
    "refund_method": "Please tell me where the refund should go: back to the payment method "
    "you paid with, or to a gift card on your account.",
    "refund_not_allowed": "Refunds can only go back to the payment method you paid with, or to "
    "a gift card on your account; please tell me which of the two you prefer.",
    "cancel_reason": "To cancel, please confirm the reason: you no longer need the order, or it "
    "was ordered by mistake.",
}
BLOCKED: dict[str, str] = {
    "unidentified": "To look into this I first need to confirm who you are: please reply with "
    "the email address on your account, or your full name and zip code.",
    "not_their_order": DECLINED["not_their_order"],
}
HANDOVER_REPLY = (
    "I'm sorry about this. I have passed your ticket to a member of our support team, who will "
    "get back to you personally."
)
INTERNAL_ID = re.compile(r"\b(?:credit_card|paypal|gift_card)_\d+\b|\b\d{10}\b")
MARKDOWN = re.compile(r"^\s*#{1,6}\s|\*\*|^\s*\|.*\||^\s*[-*]\s+\[|```", re.M)


def _what(intent: str) -> str:
    return {
        "cancel": "the cancellation",
        "return": "the return",
        "exchange": "the change of items",
        "modify_address": "the change of address",
        "update_profile_address": "the change of your account's address",
        "modify_payment": "the change of payment method",
    }.get(intent, "your request")


def compose_reply(
    name: str | None,
    planned: Mapping[str, Any] | None,
    outcome: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    passages: Sequence[Mapping[str, Any]],
    facts: Sequence[str],
    answers_question: bool = False,
) -> dict[str, Any]:
    """The reply, grounded in what the run found and did. ``outcome`` is what ``act`` did
    (``done``: the indices of the writes made; ``failed``: the one refused, with ``error``);
    ``answers_question``: the customer asked a general question, so the best help-centre
    passage is quoted and cited."""
    planned = planned or {}
    actions = list(planned.get("actions", []))
    lines = [f"Hello {name}," if name else "Hello,"]
    done: list[str] = []
    blocked = planned.get("blocked")
    if outcome is not None:
        done_at = list(outcome.get("done", []))
        if done_at:
            lines.append(
                "I have made these changes:\n"
                + "\n".join(f"- {actions[i]['summary']}." for i in done_at)
            )
            done = [actions[i]["tool"] for i in done_at]
        failed = outcome.get("failed")
        if failed is not None:
            reason = str(outcome.get("error", "")).split(": ", 2)[-1]
            lines.append(
                f"I tried to {actions[failed]['summary']}, but our system refused it: {reason}."
            )
            rest = [a for i, a in enumerate(actions) if i > failed]
            if rest:
                lines.append(
                    "So I have not gone on with:\n" + "\n".join(f"- {a['summary']}." for a in rest)
                )
    elif approval and approval.get("status") in ("rejected", "expired"):
        lines.append(
            "I asked a support lead to approve this, and it was "
            + ("not approved" if approval["status"] == "rejected" else "not decided in time")
            + ", so nothing was changed:\n"
            + "\n".join(f"- {a['summary']}." for a in actions)
            + "\nA member of our team will follow up with you."
        )
    elif approval and approval.get("status") == "pending":
        lines.append(
            "This needs a support lead's approval before I can go ahead:\n"
            + "\n".join(f"- {a['summary']}." for a in actions)
            + "\nYou will hear from us as soon as it is decided, usually within a business day."
        )
    if blocked and str(blocked).startswith("handover"):
        lines.append(HANDOVER_REPLY + " No changes have been made to your orders in the meantime.")
    elif blocked in BLOCKED:
        lines.append(BLOCKED[blocked])
    for declined in planned.get("declined", []):
        why = str(declined["why"])
        if why.startswith("wrong_status:"):
            status = why.split(":", 1)[1]
            text = (
                f"I could not make {_what(declined['intent'])}: the order is {status}, and our "
                "policy does not allow this for an order in that state."
            )
        else:
            text = f"About {_what(declined['intent'])}: {DECLINED.get(why, 'I could not do this.')}"
        if declined.get("detail"):
            text += f" {declined['detail']}"
        if text not in lines:
            lines.append(text)
    lines.extend(facts)
    own = "\n\n".join(lines)
    cites: list[str] = []
    if passages and answers_question:
        top = passages[0]
        lines.append(
            f'From our help centre, "{top["title"]}" [{top["article_id"]}]: '
            f"{gist(str(top['text']))}"
        )
        cites.append(str(top["article_id"]))
    lines.append("Best regards,\nSupportMesh support")
    return {"text": "\n\n".join(lines), "own": own, "cites": cites, "claims": done}


def gist(text: str, limit: int = 320) -> str:
    """A passage as plain sentences: headings, table rows, list marks and emphasis dropped, cut
    at the end of a sentence."""
    kept = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "|", "```")) or re.fullmatch(r"[-=*_ ]+", line):
            continue
        line = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line)
        kept.append(re.sub(r"\*\*|__|`|\[([^\]]+)\]\([^)]*\)", lambda m: m.group(1) or "", line))
    body = " ".join(kept)
    if len(body) <= limit:
        return body
    cut = body[:limit].rsplit(". ", 1)[0]
    return cut if cut.endswith(".") else cut + "."


def check_reply(
    reply: Mapping[str, Any],
    outcome: Mapping[str, Any] | None,
    planned: Mapping[str, Any] | None,
    own_orders: Sequence[str],
    cited_ids: Sequence[str],
    facts: Sequence[str],
) -> list[str]:
    """What is wrong with a reply, if anything: it must say something past its greeting, rest
    on what was found or done, name in its own words no order that is not the customer's, no
    email address, no internal id and no markdown, and claim exactly the writes made."""
    problems = []
    own = str(reply.get("own", reply["text"]))
    paragraphs = [p for p in own.split("\n\n") if p.strip() and not p.startswith("Best regards")]
    if len(paragraphs) < 2 and not reply["cites"]:
        problems.append("says nothing but a greeting")
    planned = planned or {}
    grounded = (
        any(c in cited_ids for c in reply["cites"])
        or any(f in own for f in facts)
        or planned.get("actions")
        or planned.get("declined")
        or planned.get("blocked")
    )
    if not grounded:
        problems.append("cites nothing it was given")
    for order_id in ORDER_ID.findall(own):
        if f"#{order_id.upper()}" not in own_orders:
            problems.append(f"names order #{order_id}, not the customer's")
    for email in EMAIL.findall(reply["text"]):
        problems.append(f"names an email address, {email}")
    if INTERNAL_ID.search(own):
        problems.append(f"shows an internal id, {INTERNAL_ID.search(own).group(0)}")  # type: ignore[union-attr]
    if MARKDOWN.search(reply["text"]):
        problems.append("holds markdown")
    actions = planned.get("actions", [])
    taken = [actions[i]["tool"] for i in (outcome or {}).get("done", [])]
    if list(reply.get("claims", [])) != taken:
        problems.append(f"claims {reply.get('claims')!r} but the writes made were {taken!r}")
    return problems


# --- facts and names, as the customer reads them -------------------------------------------


def method_label(customer: Mapping[str, Any], method_id: str) -> str:
    """A payment method as its owner knows it: "your PayPal", "your Visa ending 1234"."""
    method = customer["payment_methods"].get(method_id, {})
    source = method.get("source", method_id.rsplit("_", 1)[0])
    if source == "paypal":
        return "your PayPal"
    if source == "gift_card":
        return "your gift card"
    brand = str(method.get("brand") or "card").title().replace("Mastercard", "Mastercard")
    last_four = method.get("last_four")
    return f"your {brand} ending {last_four}" if last_four else f"your {brand}"


def address_text(address: Mapping[str, Any]) -> str:
    street = ", ".join(p for p in (address["address1"], address.get("address2")) if p)
    return f"{street}, {address['city']}, {address['state']} {address['zip']}"


def item_text(item: Mapping[str, Any]) -> str:
    options = ", ".join(str(v) for v in item["options"].values())
    return f"{item['name']} ({options})" if options else str(item["name"])


def items_text(items: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(item_text(i) for i in items)


def order_fact(order: dict[str, Any]) -> str:
    items = ", ".join(f"{item_text(i)} at ${Decimal(str(i['price'])):.2f}" for i in order["items"])
    tracking = [t for f in order.get("fulfillments", []) for t in f.get("tracking_id", [])]
    fact = f"Order {order['order_id']} is {order['status']}: {items}."
    if "total" in order:
        fact += f" Its total was ${Decimal(str(order['total'])):.2f}."
    if tracking:
        fact += f" Tracking number: {tracking[0]}."
    return fact


def product_fact(product: Mapping[str, Any]) -> str:
    """What the store has of a product: how many variants are in stock, and their options."""
    variants = list(product["variants"].values())
    available = [v for v in variants if v["available"]]
    options: dict[str, list[str]] = {}
    for variant in available:
        for option, value in variant["options"].items():
            options.setdefault(option, [])
            if str(value) not in options[option]:
                options[option].append(str(value))
    described = "; ".join(f"{k}: {', '.join(v)}" for k, v in options.items())
    every: dict[str, set[str]] = {}
    for variant in variants:
        for option, value in variant["options"].items():
            every.setdefault(option, set()).add(str(value))
    ranges = ", ".join(f"{len(v)} {k} options" for k, v in every.items())
    return (
        f"The {product['name']} comes in {len(variants)} variants ({ranges}); "
        f"{len(available)} of them are in stock now ({described})."
    )
