"""Triage: what a message is about, how urgent, in what mood, and whether a person must take it.

Intent and category come from the requests the message makes (``orchestrator.reading``) and,
for what asks for no write, from question cues; priority from the intent and any reason to hand
over (a threat of legal action, a chargeback, safety, fraud, anger); the entities every later
step starts from (order ids, emails). Deterministic, no I/O: the graph's triage node calls
``classify`` and then asks the CRM who the customer is.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import reading
from orchestrator.finding import emails, order_ids

# Intent cues for what asks for no write, as regular expressions over the lower-cased text.
QUESTIONS: dict[str, str] = {
    "order_status": r"\bwhere(?:'s| is) my|\bstatus\b|\btrack\w*|\bhas(?:n'?t| not) (?:arrived|"
    r"shipped|come)|\bwhen will\b|\bnot (?:yet )?(?:arrived|received)|\bstill waiting"
    r"|\bwhat'?s happening|\bany update|\bhaven'?t heard|\bhas (?:it|my \w+|the \w+)(?: \w+)?"
    r" (?:shipped|arrived)|\bdid (?:it|my \w+(?: \w+)?) (?:arrive|ship)|\bhow much did i pay",
    "kb_question": r"\bhow (?:do|long|can|much|does|many)|\bwhat(?:'s| is| are) (?:your|the)|"
    r"\bdo you\b|\bcan i\b|\bpolicy\b|\bis it possible|\bin stock\b",
}
INTENT_OF = {
    "cancel": "cancel",
    "return": "return",
    "change_items": "exchange",
    "order_address": "modify_address",
    "profile_address": "update_profile_address",
    "payment": "modify_payment",
}
ANGRY = re.compile(
    r"\b(?:furious|ridiculous|unacceptable|worst|disgusting|scam|angry|livid|pathetic|"
    r"incompetent|outrageous|useless|fed up|sick of|joke)\b|!!!",
    re.I,
)
HANDOVER: dict[str, re.Pattern[str]] = {
    "legal": re.compile(
        r"\b(?:lawyers?|attorneys?|sue|suing|legal action|small claims|(?:see you|take (?:you|"
        r"this|it)) (?:in|to) court|court (?:case|action|date))\b",
        re.I,
    ),
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
    injection: bool

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
            "injection": self.injection,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Triage":
        return cls(**{k: v for k, v in state.items() if k != "category"})


def classify(text: str) -> Triage:
    """Intent, priority, sentiment and the entities of a customer's message."""
    lowered = reading.folded(text)
    asked = [INTENT_OF[r.intent] for r in reading.requests(text) if r.intent in INTENT_OF]
    found: list[tuple[int, str]] = []
    for intent, cue in QUESTIONS.items():
        match = re.search(cue, lowered)
        if match:
            found.append((match.start(), intent))
    questions = [i for _, i in sorted(found)]
    intents = list(dict.fromkeys([*asked, *questions]))
    if asked:
        intent = asked[0]
    elif "order_status" in questions:
        intent = "order_status"
    elif questions:
        intent = questions[0]
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
    return Triage(
        intent=intent,
        intents=intents,
        priority=priority,
        sentiment="angry" if angry else "neutral",
        handover=handover,
        order_ids=order_ids(text),
        emails=emails(text),
        injection=bool(INJECTION.search(text)),
    )


def _shouting(text: str) -> bool:
    words = [w for w in re.findall(r"[A-Za-z]{3,}", text)]
    return len(words) >= 6 and sum(w.isupper() for w in words) / len(words) > 0.3
