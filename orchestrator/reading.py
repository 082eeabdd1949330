"""Read: where in a message each request is, and the details it gives.

A message holds one or more requests ("cancel the kettle order and return the mouse", a list of
"two things: 1) … 2) …"). Each request is a clause with a verb that asks for one of the store's
actions (``INTENTS``) and the words around it: its own sentence, then the sentences before and
after it that ask nothing themselves (the story, "Refund to my gift card."). The policy looks for
what a request needs innermost first: the clause, its sentence, its context, the whole message.

What a request needs that the customer states in words of their own (the cancellation reason,
where a refund goes, which payment method, an address and its corrections) is read here too,
as candidates; the policy checks them against the customer's records.
"""

import itertools
import re
from dataclasses import dataclass, field

from orchestrator.finding import ORDER_ID, addresses

# A verb asking for an action, per action the store has. Matched on lower-cased text.
INTENTS: dict[str, str] = {
    "cancel": r"\bcan(?:c|cc)(?:el|le|ell)\w*",
    "return": r"\bret(?:urn|run|rn)(?:s|ed|ing)?\b|\bsend(?:ing)? (?:\w+ ){0,4}back\b"
    r"|\bship(?:ping)? (?:\w+ ){0,3}back\b|\bmoney back\b",
    "change_items": r"\bexc?h?(?:ang|nag)\w*|\bswap\w*|\bswitch(?:ed|ing)?\b(?! (?:the )?payment)"
    r"|\bchange\b|\bmake (?:it|them|that|the|this|my)\b|\bupgrade\b|\bdowngrade\b"
    r"|\b(?:i'd|i would) rather have\b|\bget (?:it|them|one) in\b|\binstead of\b"
    r"|\bget (?:it|them|one|this|these) (?:in )?(?:one|a|the) (?:size|colou?r|capacity|version)"
    r"|\b(?:i'd like|i would like|i want|want|like|prefer) (?:it|them|one|that) in\b"
    r"|\b(?:should|could|can|would|to) be (?:one|a|the) (?:size|step) (?:bigger|smaller|larger|up|"
    r"down)\b|\bgo (?:one|a) (?:step|size) (?:up|down)\b"
    r"|\b(?:different|another|other) (?:size|colou?r|one|model|version)\b|\bmodify\b"
    r"|\bupdate (?:the|my) \w+ (?:to|for)\b|\bconvert\b|\bput me down for\b",
    "order_address": r"\b(?:ship|send|deliver|redirect|forward)\w* (?:[\w#'/+()&-]+ ){0,12}?to\b"
    r"(?=\s*:?\s*(?:\d|my |our |the (?:same|address|new|other|place|house|office)|an? (?:new|"
    r"different|friend|other)|this |that address|his |her |their |\w+'s |$))"
    r"|\b(?:ship|send|deliver|redirect|forward)\w* (?:it|them|this|that|the order) (?:there|here)\b"
    r"|\b(?:should|to|can|could|must|will) (?:go|ship|be (?:sent|shipped|delivered)) to\b"
    r"|\b(?:shipping|delivery) ad+ress\b|\bchange (?:it|the address|that) to \d"
    r"|\baddress (?:on|of|for) (?:the|my|this|that|both|all)(?! (?:account|profile|file))"
    r"|\bgoing to (?:an? |my )?(?:old|wrong|previous)\b"
    r"|\bchange where\b[^.!?\n]{0,40}\b(?:ships?|shipping|goes|going|sent|delivered)\b",
    "profile_address": r"\b(?:update|change|set|make|put|switch|correct)\w*\b[^.!?\n]{0,40}?"
    r"\b(?:(?:default|account|profile|home|billing) address|address (?:on|in|of|for) (?:my |the )?"
    r"(?:account|profile|file)|my address\b)"
    r"|\b(?:default|account|profile) address\b[^.!?\n]{0,30}\b(?:changed|updated|to be)\b"
    r"|\bmake (?:that|this|it|the \w+) (?:address )?(?:the |my )?default\b"
    r"|\b(?:new|updated|current) ad+ress (?:for|on|in) (?:my )?(?:profile|account)\b"
    r"|\b(?:put|add|save|set|use|update|change) (?:it|that|this|them)? ?(?:on|in|as|for) (?:my )?"
    r"(?:profile|account|default)\b|\bupdate (?:it|this|that|my address|the address) everywhere\b"
    r"|\bmake (?:that|this|it|the)(?: \w+){0,2} (?:address )?(?:the |my )?default\b"
    r"|\bupdate (?:my |the )?(?:account|profile)\b",
    "payment": r"\bpay (?:for [^.?!\n]{0,40}? |(?:it|that|this|them)(?: one| order)? )?"
    r"(?:with|using|by|via|on)\b"
    r"|\bcharge (?:it|this|that|the|my)\b[^.?!\n]{0,80}? (?:to|on) (?:my|the)\b"
    r"|\b(?:instead of|rather than|not) (?:on |with |to )?(?:my |the )?(?:visa|pay ?pal|"
    r"master ?card|amex|credit card|gift card|card)\b"
    r"|\b(?:move|switch|change) (?:the |my )?payment\b|\bpayment method\b"
    r"|\bput (?:it|the order|this) on my\b|\bcharged? to my \w+ instead\b"
    r"|\b(?:move|switch|change|put|have) (?:it|this|that|the order|the payment|the charge)"
    r"(?: over)? (?:to|on|onto) (?:my )?(?:pay ?pal|visa|master ?card|amex|discover|gift ?card|"
    r"credit card|other card|card)\b",
    "info": r"\btracking\b|\bwhere(?:'s| is) my\b|\bhas (?:it|my \w+|the \w+)(?: \w+)? (?:shipped|"
    r"arrived|been)\b|\bhow (?:much|many)\b|\bstatus\b|\bwhen will\b|\bdid (?:it|my) \w* ?arrive"
    r"|\bhas (?:my|the) [\w ]{0,30}? (?:shipped|arrived)\b|\bin stock\b|\bdo you (?:have|sell)\b"
    r"|\bwhat(?:'s| is| was| were) (?:the )?(?:total|price|cost|amount|status)\b"
    r"|\bhas (?:it|this|that) been (?:delivered|shipped|sent)\b",
}
# A sentence that reports, supposes or refuses is not a request: "an order was cancelled", "if
# an order gets cancelled", "I'd rather not return it", "don't cancel the other one".
NOT_ASKED = re.compile(
    r"(?:\b(?:was|were|been|got|gets|getting|already|never|don'?t|do not|not|without|rather not|"
    r"n't)\s+(?:\w+\s+){0,2})$"
)
MISTAKE = re.compile(
    r"\bby (?:mistake|mistak|accident)\b|\baccident(?:al(?:ly)?)?\b|\bmistak\w*"
    r"|\bwrong (?:cart|item|thing)\b|\bdidn'?t mean to\b|\bmeant to (?:just )?\w+"
    r"|\bunintentional",
)
NOT_NEEDED = re.compile(
    r"\bno longer (?:need|want|require)|\bdon'?t (?:really )?(?:need|want)\b|\bdo not (?:need|want)"
    r"|\bnot needed\b|\bwon'?t (?:need|be needing|use)\b|\bchanged? (?:my|our) minds?\b"
    r"|\bdon'?t have (?:a )?(?:use|need)|\bno (?:use|need) for\b|\bneed (?:it|them|this) anymore"
    r"|\b(?:isn'?t|aren'?t) needed\b|\bnot (?:going to|gonna) (?:need|use)\b"
    r"|\bdoesn'?t need|\bnot (?:need|want)(?:ed)? (?:it|them|any)",
)
CORRECTION = re.compile(
    r"\b(?:wait|sorry|oops|actually|scratch that|correction|i mean|i meant|my mistake|"
    r"make (?:it|that|them)|not that one|wrong one|typo|on second thought|instead)\b",
    re.I,
)
FALLBACK = re.compile(
    r"\bif (?:that|it|this|those|the \w+(?: \w+)?|\w+)(?:'s| is|'re| are)? (?:not|isn'?t|aren'?t"
    r"|unavailable|out of stock|sold out)|\botherwise\b|\bif not\b|\bfailing that\b|\bor else\b"
    r"|\bsecond choice\b|\bas a (?:backup|fallback)\b|\bwill do\b|\bis fine\b|\bworks too\b",
    re.I,
)

# A request that is the other branch of the one before: "If not, just cancel the order."
FALLBACK_OPENING = re.compile(
    r"^\W*(?:(?:and|but|or)\s+)?(?:if not|otherwise|failing that|or else|else"
    r"|if (?:that|it|this|they|those|there)(?:'s| is| are|'re)? (?:not|isn'?t|aren'?t)\b[^,]{0,40}"
    r"|if (?:you|they) (?:don'?t|do not|can'?t|cannot|won'?t)\b(?! mind\b)[^,]{0,60}"
    r"|if (?:that|it|this|one)(?: \w+){0,3} (?:is|'s) (?:unavailable|out of stock|sold out)\b"
    r"[^,]{0,20})",
    re.I,
)


QUOTED = re.compile(
    r"^-{2,}\s*(?:forwarded|original) message|^from: .*\n(?:sent|date|to|subject): |^on .{5,80} "
    r"wrote:\s*$|^>",
    re.I | re.M,
)


@dataclass(frozen=True)
class Request:
    """One thing the message asks for: its action, the clause that asks it, and the stretches
    of text around it, innermost first (clause, sentence, context, whole message)."""

    intent: str
    at: int  # where its verb is
    levels: tuple[tuple[int, int], ...]

    @property
    def clause(self) -> tuple[int, int]:
        return self.levels[0]


@dataclass
class Sentence:
    start: int
    end: int
    clauses: list[tuple[int, int]] = field(default_factory=list)


def folded(text: str) -> str:
    table: dict[str, str | int | None] = {"’": "'", "‘": "'", "–": "-", "—": "-"}
    return text.lower().translate(str.maketrans(table))


def sentences(text: str) -> list[Sentence]:
    """The message's sentences (a line of a list is one), each split into clauses at "and",
    ";" and ", also" where a new verb follows."""
    found = []
    for match in re.finditer(r"[^.!?\n]+(?:[.!?]+|\n|$)", text):
        start, end = match.span()
        chunk = match.group(0)
        if not chunk.strip():
            continue
        # A period inside a number or an id ("1.5L", "e.g.") does not end a sentence.
        found.append(Sentence(start, end))
    merged: list[Sentence] = []
    for sentence in found:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and re.search(r"\d\.$", text[previous.start : previous.end])
            and re.match(r"\d", text[sentence.start : sentence.end])
        ):
            previous.end = sentence.end
            continue
        merged.append(sentence)
    for sentence in merged:
        sentence.clauses = _clauses(text, sentence.start, sentence.end)
    return merged


def _clauses(text: str, start: int, end: int) -> list[tuple[int, int]]:
    lowered = folded(text[start:end])
    cuts = [0]
    for match in re.finditer(
        r",? and (?:also |then |please )?|;|, also |, plus |, then | also,? ", lowered
    ):
        rest = lowered[match.end() :]
        if any(re.match(rf"(?:\w+ ){{0,3}}?(?:{cue})", rest) for cue in INTENTS.values()):
            cuts.append(match.start())
    cuts.append(len(lowered))
    return [(start + a, start + b) for a, b in itertools.pairwise(cuts) if b > a]


def _asked(lowered: str, at: int, start: int) -> bool:
    """Whether the verb at ``at`` asks for something, rather than reporting or denying it."""
    before = lowered[start:at]
    return not NOT_ASKED.search(before)


def requests(text: str) -> list[Request]:
    """Every request of the message, in the order written."""
    lowered = folded(text)
    found: list[Request] = []
    parts = sentences(text)
    asked_in: dict[int, list[tuple[str, int, tuple[int, int]]]] = {}
    quoted = QUOTED.search(text)  # a forwarded or quoted message asks nothing of us
    for number, sentence in enumerate(parts):
        if quoted and sentence.start >= quoted.start():
            break
        for clause in sentence.clauses:
            seen: set[str] = set()
            for intent, cue in INTENTS.items():
                for match in re.finditer(cue, lowered[clause[0] : clause[1]]):
                    at = clause[0] + match.start()
                    if intent in seen or not _asked(lowered, at, clause[0]):
                        continue
                    seen.add(intent)
                    asked_in.setdefault(number, []).append((intent, at, clause))
    # A subject line is a title: its verbs count only when the message itself asks nothing.
    subject_end = text.find("\n\n") if "\n" not in text[: max(text.find("\n\n"), 0)] else -1
    in_subject = [n for n in asked_in if subject_end >= 0 and parts[n].start < subject_end]
    if in_subject and len(in_subject) < len(asked_in):
        for number in in_subject:
            del asked_in[number]
    asking = sorted(asked_in)
    for number in asking:
        sentence = parts[number]
        previous = max((n for n in asking if n < number), default=-1)
        following = min((n for n in asking if n > number), default=len(parts))
        context = (parts[previous + 1].start, parts[following - 1].end)
        if number in in_subject:  # the title asks, the message only tells: all of it is context
            context = (0, len(text))
        for intent, at, clause in asked_in[number]:
            levels = (clause, (sentence.start, sentence.end), context, (0, len(text)))
            found.append(Request(intent, at, levels))
    return sorted(found, key=lambda r: r.at)


def cancel_reason(text: str) -> str | None:
    """The cancellation reason the customer gives, as the store takes it, or None when they give
    neither of the two (or both)."""
    lowered = folded(text)
    mistake, not_needed = bool(MISTAKE.search(lowered)), bool(NOT_NEEDED.search(lowered))
    if mistake and not not_needed:
        return "ordered by mistake"
    if not_needed and not mistake:
        return "no longer needed"
    return None


def withdrawn_order_ids(text: str) -> set[str]:
    """Order ids the customer takes back in the same message ("cancel #W1. Wait, wrong one - I
    meant #W2"), or asks to leave alone ("don't touch #W3")."""
    lowered = folded(text)
    withdrawn = set()
    matches = list(ORDER_ID.finditer(text))
    for number, match in enumerate(matches):
        after = lowered[match.end() : match.end() + 80]
        later = matches[number + 1] if number + 1 < len(matches) else None
        if later and re.search(
            r"\b(?:wrong one|not that one|i meant|i mean|sorry|scratch that|actually)\b",
            lowered[match.end() : later.start()],
        ):
            withdrawn.add(f"#{match.group(1).upper()}")
        before = lowered[max(0, match.start() - 40) : match.start()]
        if re.search(
            r"\b(?:don'?t|do not|never) (?:touch|cancel|change)\b[^.]*$|\bnot\s*$", before
        ):
            withdrawn.add(f"#{match.group(1).upper()}")
        if re.match(r"[^.]{0,20}\b(?:is fine|stays|alone)\b", after):
            withdrawn.add(f"#{match.group(1).upper()}")
    return withdrawn


def address_in(text: str, wider: str | None = None) -> dict[str, str] | None:
    """The one new address the text gives, with a correction of its zip code in the text or in
    ``wider`` (the request's context) applied ("Oops, the zip is 28211, not 28207"); None if it
    gives none, or several that differ."""
    found = addresses(text)
    if not found:
        return None
    if len({tuple(sorted(a.items())) for a in found}) > 1:
        return None
    address = dict(found[0])
    said = folded(wider if wider is not None else text)
    at = said.find(address["zip"])
    later = said[at + 5 :] if at >= 0 else ""
    fixed = re.search(
        rf"\b(?:typo|wrong|sorry|oops|actually|correction|mistake|meant|should be)\b[^.!?]{{0,40}}"
        rf"\bzip(?: code)?(?: is| should be|:)?\s*(?:actually\s+)?(\d{{5}})\b"
        rf"|\b(\d{{5}}),? not {address['zip']}\b"
        rf"|\bnot {address['zip']},? (?:but |it'?s )?(\d{{5}})\b"
        rf"|\bzip(?: code)? is (\d{{5}}),? not {address['zip']}\b"
        rf"|\b(?:typo|wrong|sorry|oops|correction|mistake)\b[^.!?]{{0,40}}\bzip\b[^.!?\d]{{0,30}}?"
        rf"\b(?:it'?s|is|should be|to)\s+(\d{{5}})\b",
        later,
    )
    if fixed:
        address["zip"] = next(g for g in fixed.groups() if g)
    return address


def is_fallback(text: str, request: Request) -> bool:
    """Whether the request's sentence opens as the other branch of a condition before it."""
    start = request.levels[1][0]
    return bool(FALLBACK_OPENING.search(folded(text[start : request.at])))
