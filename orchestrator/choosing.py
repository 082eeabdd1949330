"""Check a request against the customer's records: which of their orders, items, variants,
payment methods and addresses its words name, and whether exactly one fits.

Every function here answers with what was found or with why nothing was (a short code the
reply explains): ``which_order`` and ``which_items`` when several fit and nothing decides,
``no_variant`` when no available variant has the options asked for, and so on. None guesses:
two candidates are never narrowed to one by preference.

Orders are as ``get_order`` returns them (plus ``total``); products as ``get_product`` does.
"""

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator import catalogue
from orchestrator.finding import ORDER_ID
from orchestrator.reading import CORRECTION, FALLBACK, Request, address_in, folded

Order = dict[str, Any]
Item = dict[str, Any]
Product = Mapping[str, Any]

PENDING = ("pending", "pending (item modified)")
KEEP = re.compile(
    r"\bkeep(?:ing)?\b|\bhang(?:ing)? on to\b|\bstay(?:s|ing)?\b|\bleave\b|\bis fine\b"
    r"|\bare fine\b|\bexcept\b|\bbut not\b|\bother than\b|\bapart from\b|\bbesides\b",
)
ALL_ITEMS = re.compile(
    r"\b(?:everything(?! else)|all (?:of )?(?:the |my )?(?:items|things|of it|stuff)"
    r"|(?:the )?whole "
    r"(?:order|thing)|(?:the )?entire order|all of it|all of them|any of it|both items)\b"
)
ALL_ORDERS = re.compile(
    r"\b(?:all|every|each)(?: of)?(?: my| the)?(?: (?:pending|open|current|outstanding|"
    r"unshipped))? orders?\b|\bboth(?: of)?(?: my| the| those| these)?(?: (?:pending|open))?"
    r" orders\b|\bboth of (?:them|those)\b|\b(?:my|the) (?:pending|open) orders\b"
    r"|\b(?:anything|everything|whatever|all)(?: \w+'?\w*){0,4}? (?:that )?(?:hasn'?t|has not|"
    r"not yet|isn'?t|haven'?t) (?:yet )?(?:shipped|sent|delivered|been shipped)"
)
# Of several items, the one a price comparison picks: "the one that cost more", "whichever was
# cheaper". Not "I found a cheaper one elsewhere".
MORE_EXPENSIVE = re.compile(
    r"\b(?:that|which|whichever)(?: one)? (?:cost|costs|was|were|is) (?:more|pricier|more "
    r"expensive)\b|\bthe (?:more expensive|pricier|costlier|most expensive|higher[- ]priced)\b"
    r"|\bthe expensive one\b"
)
CHEAPER = re.compile(
    r"\b(?:that|which|whichever)(?: one)? (?:cost|costs|was|were|is) (?:less|cheaper|less "
    r"expensive)\b|\bthe (?:cheaper|cheapest|less expensive|lower[- ]priced)\b"
)
SHIPPED = re.compile(r"\b(?:hasn'?t|has not|not yet|haven'?t|before it) (?:shipped|ships|left)\b")
RECEIVED = re.compile(r"\b(?:received|arrived|delivered|i got|got (?:it|them)|came)\b")
ORIGINAL = re.compile(
    r"\boriginal (?:payment|card|method|form)|\b(?:same|original) (?:card|way|method|account|"
    r"payment)\b|\bthe (?:card|one|method|account) i (?:paid|used|bought it)\b|\bi paid with\b"
    r"|\bwhere it came from\b|\bi used (?:for|to pay)\b|\bpaid (?:for )?(?:it |them )?with\b"
)
GIFT_CARD = re.compile(r"\bgift ?cards?\b|\bstore credit\b|\bgiftcard\b")


@dataclass
class Found:
    """What a check found: the records, or why none (``why``, empty when found)."""

    records: list[Any] = field(default_factory=list)
    why: str = ""


def text_of(text: str, span: tuple[int, int]) -> str:
    return text[span[0] : span[1]]


def _ids_in(text: str, span: tuple[int, int]) -> list[str]:
    return list(dict.fromkeys(f"#{m.upper()}" for m in ORDER_ID.findall(text_of(text, span))))


def _products_in(
    text: str, span: tuple[int, int], names: Sequence[str], skip: Sequence[tuple[int, int]] = ()
) -> list[catalogue.ProductSpan]:
    spans = catalogue.product_spans(text_of(text, span), names)
    shifted = [catalogue.ProductSpan(s.start + span[0], s.end + span[0], s.names) for s in spans]
    return [s for s in shifted if not any(a <= s.start < b for a, b in skip)]


def _holds(order: Order, names: frozenset[str]) -> bool:
    return any(i["name"].lower() in names for i in order["items"])


def choose_orders(
    text: str,
    request: Request,
    orders: Sequence[Order],
    statuses: Sequence[str],
    withdrawn: set[str],
    skip: Sequence[tuple[int, int]] = (),
    products: Mapping[str, Product] | None = None,
) -> Found:
    """The customer's orders the request is about, in a state ``statuses`` allows: named by id
    (nearest words first), by "all/both my pending orders", or by what they hold; else their
    only order in such a state. ``skip``: stretches that describe another order (a reference)."""
    own = {o["order_id"]: o for o in orders}
    names = sorted({i["name"] for o in orders for i in o["items"]})
    lowered = folded(text)
    for span in request.levels[:3]:
        ids = [
            f"#{m.group(1).upper()}"
            for m in ORDER_ID.finditer(text, span[0], span[1])
            if not any(a <= m.start() < b for a, b in [*skip, *_set_apart(text, request)])
        ]
        ids = [i for i in dict.fromkeys(ids) if i not in withdrawn]
        if ids:
            mine = [own[i] for i in ids if i in own]
            if not mine:
                return Found(why="not_their_order")
            return _in_state(mine, statuses, several=len(mine) > 1)
    sentence = text_of(lowered, request.levels[1])
    quantified = ALL_ORDERS.search(sentence)
    described: list[Order] | None = None
    skip = [*skip, *_set_apart(text, request)]
    for span in request.levels[:3]:
        mentioned = [  # not those said to stay ("the other order with the hose should stay")
            s
            for s in _products_in(text, span, names, skip)
            if not _said_to_stay(lowered, s, request)
        ]
        if mentioned:
            wanted = [s.names for s in mentioned]
            holding_all = [o for o in orders if all(_holds(o, n) for n in wanted)]
            holding_any = [o for o in orders if any(_holds(o, n) for n in wanted)]
            described = holding_any if quantified or not holding_all else holding_all
            break
    candidates = list(orders) if described is None else described
    if described is not None and len(described) > 1 and not quantified:
        candidates = _narrowed(described, text_of(lowered, request.levels[2]))
        candidates = _by_items_described(text, request, candidates, wanted, products) or candidates
    if quantified:
        kept = _excepted(text, request, orders)
        chosen = [o for o in candidates if o["status"] in statuses and o not in kept]
        if "both" in quantified.group(0) and len(chosen) != 2:
            return Found(why="which_order")
        return Found(chosen) if chosen else Found(why="no_order")
    scope = text_of(lowered, request.levels[2])
    narrowed = _narrowed(candidates, scope)
    if described is None:
        # Nothing describes the order: the customer's only one in a state the action allows.
        allowed = [o for o in narrowed if o["status"] in statuses]
        if len(allowed) == 1:
            return Found(allowed)
        if not allowed:
            return Found(
                why=f"wrong_status:{narrowed[0]['status']}" if len(narrowed) == 1 else "no_order"
            )
        return Found(why="which_order")
    return _in_state(narrowed, statuses, several=False)


def _set_apart(text: str, request: Request) -> list[tuple[int, int]]:
    """Stretches that name what the request leaves out ("except the one with the grill") or
    points to ("the same address as my luggage order", "the board I got in order #W…")."""
    found = []
    start, end = request.levels[2]
    words = folded(text[start:end])
    for match in re.finditer(
        r"\b(?:except|but not|other than|apart from|besides|everything but|all but"
        r"|same (?:\w+ ){0,3}?(?:as|in|from|that)"
        r"|(?:i )?got in (?:my )?(?:earlier|previous|other|last) order)\b[^.!?;]*",
        words,
    ):
        found.append((start + match.start(), start + match.end()))
    return found


def _by_items_described(
    text: str,
    request: Request,
    orders: list[Order],
    wanted: list[frozenset[str]],
    products: Mapping[str, Product] | None,
) -> list[Order]:
    """Of several orders holding the product named, those whose item the words describe ("the
    blue speaker" when the black one is in another order)."""
    if products is None or len(wanted) != 1:
        return []
    items = [i for o in orders for i in o["items"] if i["name"].lower() in wanted[0]]
    span = catalogue.ProductSpan(0, 0, wanted[0])
    narrowed = _described(text, request, span, items, products)
    if len(narrowed) == len(items):
        return []
    ids = {i["item_id"] for i in narrowed}
    return [o for o in orders if any(i["item_id"] in ids for i in o["items"])]


def _excepted(text: str, request: Request, orders: Sequence[Order]) -> list[Order]:
    """Orders the sentence sets apart: "all my pending orders except the one with the grill"."""
    sentence = text_of(text, request.levels[1])
    match = re.search(
        r"\b(?:except|but not|other than|apart from|besides|everything but|all but)\b(.*)",
        sentence,
        re.I,
    )
    if match is None:
        return []
    names = sorted({i["name"] for o in orders for i in o["items"]})
    mentioned = catalogue.product_spans(match.group(1), names)
    ids = set(_ids_in(match.group(1), (0, len(match.group(1)))))
    return [o for o in orders if o["order_id"] in ids or any(_holds(o, s.names) for s in mentioned)]


def _narrowed(orders: Sequence[Order], scope: str) -> list[Order]:
    """Orders narrowed by what the words say of their state or where they went, when that
    leaves any: "hasn't shipped", "I received", "my Phoenix delivery"."""
    narrowed = list(orders)
    if SHIPPED.search(scope) or re.search(r"\b(?:pending|open) order", scope):
        narrowed = [o for o in narrowed if o["status"] in PENDING] or narrowed
    elif RECEIVED.search(scope):
        narrowed = [o for o in narrowed if o["status"] == "delivered"] or narrowed
    cities = [
        o for o in narrowed if re.search(rf"\b{re.escape(o['address']['city'].lower())}\b", scope)
    ]
    if cities and len(cities) < len(narrowed):
        narrowed = cities
    return narrowed


def _in_state(found: list[Order], statuses: Sequence[str], several: bool) -> Found:
    allowed = [o for o in found if o["status"] in statuses]
    if not allowed:
        return Found(why=f"wrong_status:{found[0]['status']}" if found else "no_order")
    if len(allowed) > 1 and not several:
        return Found(why="which_order")
    return Found(allowed)


# --- items -------------------------------------------------------------------------------------


def _kept(lowered: str, span: catalogue.ProductSpan, request: Request) -> bool:
    """Whether the words around a product say it is kept ("I'm keeping the kettle"), or that
    it only tells which order is meant ("from my order with the air purifier")."""
    return _names_the_order(lowered, span) or _said_to_stay(lowered, span, request)


def _names_the_order(lowered: str, span: catalogue.ProductSpan) -> bool:
    """Whether a product is named to say which order is meant ("the order with the air
    purifier", "my delivered order (espresso machine, office chair etc)")."""
    opened = lowered.rfind("(", 0, span.start)
    if opened > lowered.rfind(")", 0, span.start) and re.search(
        r"\b(?:order|delivery|shipment|package)\s*(?:#?w\d{7}\s*)?$", lowered[:opened]
    ):
        return True  # "my delivered order (espresso machine, office chair etc)"
    if re.match(r"\s*(?:'s )?(?:order|purchase|delivery|shipment|package)\b", lowered[span.end :]):
        return True  # "the headphones from my espresso machine order"
    return bool(
        re.search(
            r"\b(?:order|one|delivery|shipment|package)(?: that)?(?: also)? (?:with|has|had|holds|"
            r"contains|containing|including|includes|holding)\s+(?:in it )?(?:the |a |an |my |two |"
            r"both )?(?:(?!(?:can|could|would|please|change|exchange|swap|return|cancel|send|i|"
            r"you)\b)[\w-]+,? (?:and |\+ |& )?(?:the |a |an )?){0,6}$",
            lowered[max(0, span.start - 80) : span.start],
        )
    )


def _said_to_stay(lowered: str, span: catalogue.ProductSpan, request: Request) -> bool:
    """Whether the words around a product say it stays as it is ("I'm keeping the kettle",
    "the other order with the hose should stay")."""
    start = max(lowered.rfind(m, 0, span.start) for m in (".", "!", "?", "\n", ";", " - ")) + 1
    end = min((i for i in (lowered.find(m, span.end) for m in (".", "!", "?", "\n")) if i >= 0),
              default=len(lowered))  # fmt: skip
    sentence = lowered[start:end]
    before = lowered[start : span.start]
    if KEEP.search(before[-60:]) and not re.search(request_verbs(), before[-25:]):
        return True
    clause = request.clause
    outside = not (clause[0] <= span.start < clause[1])
    return outside and bool(KEEP.search(sentence)) and not re.search(request_verbs(), sentence)


def _part_of_option(
    text: str, span: catalogue.ProductSpan, order: Order, products: Mapping[str, Product]
) -> bool:
    """Whether a one-word product name is the end of another item's option ("the wireless
    charging case" of earbuds is not a phone case)."""
    word = folded(text[span.start : span.end]).strip()
    if " " in word:
        return False
    window = (max(0, span.start - 25), span.end)
    for item in order["items"]:
        product = products.get(item["product_id"])
        if product is None or item["name"].lower() in span.names:
            continue
        options = {k.lower() for v in product["variants"].values() for k in v["options"]}
        if not any(word.rstrip("s") in option.split() for option in options):
            continue  # "green backpack" is no option of the garden hose
        for value in catalogue.value_spans(text_of(text, window), product):
            if window[0] + value.end >= span.start - 1:
                return True
    return False


def request_verbs() -> str:
    return r"\b(?:return|send|exchange|swap|change|cancel|refund|replace)\w*"


def choose_items(
    text: str, request: Request, order: Order, products: Mapping[str, Product]
) -> Found:
    """The items of ``order`` the request is about: those it names (of several of one product,
    the ones its words describe), or every item for "everything", or the only item."""
    lowered = folded(text)
    names = sorted({i["name"] for i in order["items"]})
    mentioned: list[catalogue.ProductSpan] = []
    for span in request.levels[:3]:
        mentioned = [
            s
            for s in _products_in(text, span, names)
            if not _kept(lowered, s, request) and not _part_of_option(text, s, order, products)
        ]
        if mentioned:
            break
    scope = text_of(lowered, request.levels[1])
    if ALL_ITEMS.search(scope) or (not mentioned and len(order["items"]) == 1):
        # Every line ("everything except the laptop"; two identical bottles are two lines).
        kept = [
            s for s in _products_in(text, request.levels[2], names) if _kept(lowered, s, request)
        ]
        return Found(
            [i for i in order["items"] if not any(i["name"].lower() in k.names for k in kept)]
        )
    if not mentioned:
        return Found(why="which_items")
    chosen: list[Item] = []
    for mention in mentioned:
        same = [i for i in order["items"] if i["name"].lower() in mention.names]
        if len(same) > 1:
            said = lowered[mention.start : mention.end]
            plural = bool(re.search(r"s\b", said)) and not re.search(
                r"\b(?:one of|either)\b", lowered[max(0, mention.start - 20) : mention.start]
            )
            if plural and _every_one(lowered[max(0, mention.start - 30) : mention.start], same):
                chosen.extend(i for i in same if not any(i is c for c in chosen))
                continue  # "both grills: the charcoal one and the electric one"
            narrowed = _described(text, request, mention, same, products)
            if len(narrowed) != 1 and not (plural and len(narrowed) == len(same)):
                return Found(why="which_items")
            same = narrowed
        chosen.extend(i for i in same if not any(i is c for c in chosen))
    return Found(chosen)


COUNTS = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4}


def _every_one(before: str, items: list[Item]) -> bool:
    """Whether the words before a plural product say every one of them: "both", "all (of)
    the", or their number ("the two grills")."""
    said = re.search(
        r"\b(?:(both|all|each|every one)(?: of)?(?: (?:the|my|those|these))?(?: (\w+))?"
        r"|(?:the|my|those|these) (\w+))\s*$",
        before,
    )
    if said is None or re.search(r"\b(?:one|either|which|whichever|neither|any) of\b", before):
        return False  # "whichever of the two kettles was cheaper"
    number = said.group(2) or said.group(3)
    if said.group(1) and (number is None or number in ("the", "my", "those", "these")):
        return True
    return COUNTS.get(number or "") == len(items)


def _described(
    text: str,
    request: Request,
    span: catalogue.ProductSpan,
    items: list[Item],
    products: Mapping[str, Product],
) -> list[Item]:
    """Of several items of one product, those the words describe: options named (and not
    denied), "the one that cost more", "the shorter one"."""
    lowered = folded(text)
    product = products.get(items[0]["product_id"])
    # The product's own noun phrase first ("the blue 20W speaker"), then wider.
    before = lowered[max(0, span.start - 30) : span.start]
    phrase_start = span.start - len(re.split(r"[,;:.!?()\n]|\b(?:and|or|to|from)\b", before)[-1])
    after = lowered[span.end : span.end + 30]
    phrase_end = span.end + len(re.split(r"[,;:.!?()\n]|\b(?:and|or|to|for|from)\b", after)[0])
    phrase = (phrase_start, phrase_end) if span.end > span.start else None
    for level in [*([phrase] if phrase else []), *request.levels[:3]]:
        words = text_of(lowered, level)
        narrowed = list(items)
        if MORE_EXPENSIVE.search(words):
            top = max(float(i["price"]) for i in items)
            narrowed = [i for i in narrowed if float(i["price"]) == top]
        elif CHEAPER.search(words):
            low = min(float(i["price"]) for i in items)
            narrowed = [i for i in narrowed if float(i["price"]) == low]
        if product is not None:
            for value in catalogue.value_spans(text_of(text, level), product):
                before = words[max(0, value.start - 24) : value.start]
                if re.search(
                    r"\b(?:for|to|into|instead|get (?:it|them|one) in|rather have)\b"
                    r"(?:\s+(?:a|an|the|size|one|ones|version|in))*\s*$",
                    before,
                ):
                    continue  # what they want, not what they have
                having = [i for i in narrowed if str(i["options"].get(value.option)) == value.value]
                if value.denied:
                    having = [i for i in narrowed if i not in having]
                if having and len(having) < len(narrowed):
                    narrowed = having
            narrowed = _by_comparison(words, narrowed, product)
        if len(narrowed) < len(items):
            return narrowed
    return items


def _by_comparison(words: str, items: list[Item], product: Product) -> list[Item]:
    """ "the shorter one", "the smaller kettle": the item at one end of an ordered option."""
    match = re.search(
        r"\bthe (shorter|smaller|bigger|larger|taller|longer|lighter|heavier)\b", words
    )
    if match is None or len(items) < 2:
        return items
    for option in sorted({k for i in items for k in i["options"]}):
        order = catalogue.ordered_values(product, option)
        values = {str(i["options"].get(option)) for i in items}
        if order is None or len(values) != len(items):
            continue
        pick = min if match.group(1) in ("shorter", "smaller", "lighter") else max
        end = pick(values, key=order.index)
        return [i for i in items if str(i["options"].get(option)) == end]
    return items


# --- new options -------------------------------------------------------------------------------


def choose_variants(
    text: str,
    request: Request,
    items: list[Item],
    products: Mapping[str, Product],
    orders: Sequence[Order],
) -> Found:
    """For each item, the available variant the request asks for: every option it names (by
    value, by a step such as "one size up", or by another order's item) changed, the others as
    the item has them; a fallback ("if not, then blue") taken only when the first choice is not
    available. Found.records: the new item ids, in the order of ``items``."""
    new_ids = []
    level = request.levels[2]
    names = sorted({i["name"] for i in items})
    mentions = _products_in(text, level, names)
    asking = _asking_only(text, request)
    for item in items:
        product = products.get(item["product_id"])
        if product is None:
            return Found(why="no_variant")
        wanted = _wanted(asking, folded(asking), level, item, items, products, mentions)
        if not wanted:
            wanted = _wanted(text, folded(text), level, item, items, products, mentions)
        referenced = _referenced(text, request, item, orders)
        if referenced is not None:
            wanted = {k: [v] for k, v in referenced.items() if str(item["options"].get(k)) != v}
        if not wanted:
            return Found(why="no_variant")
        found = _available(item, product, wanted)
        if found.why:
            return found
        new_ids.append(found.records[0])
    return Found(new_ids)


WANTING = re.compile(
    r"\b(?:want|wanted|prefer|rather|would like|i'd like|need|instead|should be|looking for|"
    r"hoping for|same|still|keep)\b"
)


def _asking_only(text: str, request: Request) -> str:
    """``text`` with only the words that can say what the customer wants kept (the others
    blanked, so that positions hold): the request's own sentences, and the sentences around it
    that want, prefer, fall back or correct ("If silver isn't available, blue is fine"), not
    those that only describe ("I have a black one and a blue one")."""
    keep = [request.levels[1]]
    start, end = request.levels[2]
    for match in re.finditer(r"[^.!?\n]+[.!?\n]?", text[start:end]):
        words = folded(match.group(0))
        if FALLBACK.search(words) or CORRECTION.search(words) or WANTING.search(words):
            keep.append((start + match.start(), start + match.end()))
    return "".join(c if any(a <= n < b for a, b in keep) else " " for n, c in enumerate(text))


def _owner(
    lowered: str,
    span: catalogue.Span,
    items: list[Item],
    mentions: list[catalogue.ProductSpan],
    product_of: dict[str, set[str]],
    key: str,
) -> list[Item]:
    """The items a value or step belongs to: the nearest product named before it whose product
    has such a value, else the nearest after."""
    having = [i for i in items if key in product_of.get(i["product_id"], set()) or key == "*"]
    if len({i["product_id"] for i in having}) <= 1:
        return having
    for mention in mentions:  # "the blue 20W speaker": the words just before a product are its
        gap = lowered[span.end : mention.start]
        if (
            0 <= len(gap) <= 30
            and mention.start >= span.end
            and not re.search(r"[,;:.!?()\n]|\b(?:and|or|to|for|from|with|instead)\b", gap)
        ):
            owners = [i for i in having if i["name"].lower() in mention.names]
            if owners:
                return owners
    before = [m for m in mentions if m.end <= span.start]
    after = [m for m in mentions if m.start >= span.end]
    for mention in [*reversed(before), *after]:
        owners = [i for i in having if i["name"].lower() in mention.names]
        if owners:
            return owners
    return having


def _wanted(
    text: str,
    lowered: str,
    level: tuple[int, int],
    item: Item,
    items: list[Item],
    products: Mapping[str, Product],
    mentions: list[catalogue.ProductSpan],
) -> dict[str, list[str]]:
    """Each option the words change for ``item``: its new values, first choice first."""
    words = text_of(text, level)
    product = products[item["product_id"]]
    product_of: dict[str, set[str]] = {}
    spans: list[catalogue.ValueSpan] = []
    for other in items:
        if other["product_id"] in products:
            found = catalogue.value_spans(words, products[other["product_id"]])
            product_of.setdefault(other["product_id"], set()).update(
                f"{v.option}={v.value}" for v in found
            )
    for value in catalogue.value_spans(words, product):
        shifted = catalogue.ValueSpan(
            value.start + level[0], value.end + level[0], value.product_id, value.option,
            value.value, value.denied,
        )  # fmt: skip
        owners = _owner(
            lowered, shifted, items, mentions, product_of, f"{value.option}={value.value}"
        )
        if item in owners:
            spans.append(shifted)
    wanted: dict[str, list[tuple[int, str]]] = {}
    denied: dict[str, set[str]] = {}
    for value in spans:
        current = str(item["options"].get(value.option))
        if value.denied:
            denied.setdefault(value.option, set()).add(value.value)
        elif value.value != current and not _described_before(lowered, value):
            wanted.setdefault(value.option, []).append((value.start, value.value))
    for step in catalogue.step_spans(words):
        shifted_step = catalogue.StepSpan(
            step.start + level[0], step.end + level[0], step.step, step.option_words
        )
        if item not in _owner(lowered, shifted_step, items, mentions, {}, "*"):
            continue
        option = catalogue.step_option(product, step.option_words)
        if option is None:
            continue
        value_after = catalogue.stepped(
            product, option, str(item["options"].get(option)), step.step
        )
        if value_after is not None:
            wanted.setdefault(option, []).append((shifted_step.start, value_after))
    chosen: dict[str, list[str]] = {}
    for option, said in wanted.items():
        said = sorted(dict.fromkeys(said))
        values = list(dict.fromkeys(v for _, v in said if v not in denied.get(option, set())))
        if len(values) > 1:
            between = lowered[said[0][0] : said[-1][0]]
            if CORRECTION.search(between) and not FALLBACK.search(between):
                values = [said[-1][1]]
            elif not FALLBACK.search(lowered[said[0][0] : said[-1][0] + 40]):
                return {option: []}  # two new values and nothing says which: not found
        if values:
            chosen[option] = values
    return chosen


def _described_before(lowered: str, value: catalogue.ValueSpan) -> bool:
    """Whether a value describes what the customer has rather than what they want: "from
    black", "the black one I got", "instead of black"."""
    before = lowered[max(0, value.start - 12) : value.start]
    after = lowered[value.end : value.end + 16]
    return bool(re.search(r"\bfrom\s+(?:the\s+|a\s+|my\s+)?$", before)) and not re.search(
        r"^\s*(?:one|version)", after
    )


def _referenced(
    text: str, request: Request, item: Item, orders: Sequence[Order]
) -> dict[str, str] | None:
    """Options copied from the same product in another of the customer's orders: "exactly the
    same board I got in my earlier order #W6344370"."""
    words = text_of(text, request.levels[1])
    if not re.search(r"\bsame\b", words, re.I):
        return None
    for order_id in _ids_in(text, request.levels[1]):
        other = next((o for o in orders if o["order_id"] == order_id), None)
        if other is None or any(i["item_id"] == item["item_id"] for i in other["items"]):
            continue
        same = [i for i in other["items"] if i["product_id"] == item["product_id"]]
        if len(same) == 1:
            return {k: str(v) for k, v in same[0]["options"].items()}
    return None


def _available(item: Item, product: Product, wanted: dict[str, list[str]]) -> Found:
    """The first available variant with the options wanted (each option's choices in order),
    the other options as ``item`` has them."""
    if any(not values for values in wanted.values()):
        return Found(why="no_variant")
    options = sorted(wanted)
    current = {k: str(v) for k, v in item["options"].items()}
    seen_unavailable = False
    for combo in itertools.product(*(wanted[o] for o in options)):
        target = {**current, **dict(zip(options, combo, strict=True))}
        if target == current:
            continue
        matches = catalogue.variants_with(product, target)
        if matches and matches[0]["available"]:
            return Found([str(matches[0]["item_id"])])
        seen_unavailable = seen_unavailable or bool(matches)
    return Found(why="unavailable" if seen_unavailable else "no_variant")


# --- payment methods and addresses -------------------------------------------------------------


def named_methods(words: str, customer: Mapping[str, Any], aimed: bool = False) -> list[str]:
    """The customer's payment methods these words name ("my PayPal", "the Visa ending 9858",
    "my gift card", "credit card" when they have one), in the order named, not the denied
    ones ("instead of my Visa"); with ``aimed``, only those named as where money goes ("to my
    Visa", "use my PayPal")."""
    lowered = folded(words)
    methods: dict[str, dict[str, Any]] = customer["payment_methods"]
    found: list[tuple[int, str]] = []
    for method_id, method in methods.items():
        source = str(method.get("source", method_id.rsplit("_", 1)[0]))
        brand = str(method.get("brand", "")).lower()
        last_four = str(method.get("last_four", ""))
        patterns = []
        if source == "paypal":
            patterns.append(r"\bpay ?pal\b")
        elif source == "gift_card":
            patterns.append(GIFT_CARD.pattern)
        else:
            if brand:
                patterns.append(
                    rf"\b{re.escape(brand)}\b"
                    + ("|\\bmaster ?card\\b" if brand == "mastercard" else "")
                )
            if last_four:
                patterns.append(rf"(?<!\d){last_four}(?!\d)")
            cards = [m for m in methods.values() if m.get("source") == "credit_card"]
            if len(cards) == 1:
                patterns.append(r"\b(?:credit|debit) card\b|\bmy card\b|\bthe card\b")
        for pattern in patterns:
            for match in re.finditer(pattern, lowered):
                before = lowered[max(0, match.start() - 30) : match.start()]
                if re.search(
                    r"\b(?:instead of|rather than|not|than)\s+(?:my |the |on |with |to )*$", before
                ):
                    continue
                if aimed and (
                    not re.search(
                        r"\b(?:to|onto|on|into|with|via|using|use)\s+(?:my |the |your |a )?$",
                        before,
                    )
                    or re.search(
                        r"\b(?:paid|bought|purchased|ordered|was)\s+\w*\s*(?:with|on|via)\s+"
                        r"(?:my |the )?$",
                        before,
                    )
                ):
                    continue  # "I paid with PayPal" says where money came from, not where it goes
                found.append((match.start(), method_id))
    by_digits = {
        m
        for m in methods
        if methods[m].get("last_four")
        and re.search(rf"(?<!\d){methods[m]['last_four']}(?!\d)", lowered)
    }
    if by_digits:  # "the Visa ending 5173": not the other Visa
        found = [
            (at, m)
            for at, m in found
            if m in by_digits or methods[m].get("source") != "credit_card"
        ]
    ordered = [m for _, m in sorted(found)]
    return list(dict.fromkeys(ordered))


def original_method(order: Order) -> str | None:
    return next(
        (
            p["payment_method_id"]
            for p in order["payment_history"]
            if p["transaction_type"] == "payment"
        ),
        None,
    )


def payment_for(
    text: str, request: Request, customer: Mapping[str, Any], order: Order, about: str
) -> Found:
    """The payment method the customer names for ``about`` (a refund, a price difference):
    nearest words first; "the card I paid with", "same card" and the like mean the order's
    original method."""
    for span in request.levels:
        words = text_of(text, span)
        named = named_methods(words, customer)
        original = ORIGINAL.search(folded(words))
        if original and re.search(r"\bnot\s+(?:to\s+)?$", folded(words)[: original.start()][-12:]):
            original = None  # "not the card I paid with"
        paid_with = original_method(order) or ""
        if (
            about == "refund_method"
            and not named
            and paid_with.startswith("credit_card")
            and re.search(r"\b(?:my|the|a) (?:credit |debit )?card\b", folded(words))
        ):
            return Found([paid_with])  # a refund may go to no card but the one paid with
        if original and not named:
            method = original_method(order)
            return Found([method]) if method else Found(why=about)
        if len(named) == 1:
            return Found(named)
        if len(named) > 1:
            # The one named as where the money goes: "refund them to my Visa card, NOT to
            # PayPal - I closed my PayPal balance out".
            aimed = named_methods(words, customer, aimed=True)
            if len(aimed) == 1:
                return Found(aimed)
            gift = [m for m in named if m.startswith("gift_card")]
            if len(gift) == 1 and GIFT_CARD.search(folded(words)) and about == "refund_method":
                return Found(gift)
            return Found(why=about)
    return Found(why=about)


# The account's address named as where an order goes: "send it to my home address that's on
# my account". Not "update the address on my profile" (that one is being changed).
PROFILE_ADDRESS = re.compile(
    r"\bto (?:my |the |our )?(?:home|default|usual|permanent|regular|main|profile|account) "
    r"address\b|\bto (?:the |my )?address (?:on|in) (?:my )?(?:profile|account|file)\b"
    r"|\bto (?:the )?address (?:that'?s|that is) on my\b|\bto my (?:profile|account)'?s? address"
    r"|\bto (?:my )?home\b(?! [a-z]+ \d)"
)
ORDER_ADDRESS = re.compile(
    r"\bsame (?:address|place)(?: as| that)?\b([^.!?\n]{0,80})|\b(?:address|place|where)\b"
    r"[^.!?\n]{0,40}\b(?:was|were|got|get) (?:delivered|shipped|sent)\b|\b(?:the place|the "
    r"address) (?:in \w+ )?where\b([^.!?\n]{0,80})"
    r"|\b(?:was|were|got|get) (?:delivered|shipped|sent) to (?:my|our|the) (?:\w+ )?(?:place|"
    r"address|house|apartment|flat|home|office)\b"
    r"|\b(?:address|place)\b[^.!?\n]{0,60}\b(?:is|are) (?:going|headed|being shipped|shipping|"
    r"being sent)\b"
)


def address_for(
    text: str,
    request: Request,
    customer: Mapping[str, Any],
    orders: Sequence[Order],
    for_profile: bool = False,
) -> tuple[dict[str, str] | None, list[tuple[int, int]]]:
    """The address the request gives, or one it names by reference ("the same address as my
    luggage order", "my home address on my profile", "where my last order was delivered"),
    nearest words first: a reference in the request's sentence wins over an address further
    off (a forwarded confirmation's "Ship to: …" is the old one). Also the stretches of text
    that describe a referenced order."""
    lowered = folded(text)
    for level in request.levels[:3]:
        found = address_in(text_of(text, level), text_of(text, request.levels[2]))
        if found is not None:
            return found, []
        reference = ORDER_ADDRESS.search(text_of(lowered, level))
        if reference is not None:
            stretch = (level[0] + reference.start(), level[0] + reference.end())
            return _referenced_address(text, lowered, stretch, level, orders), [stretch]
        if not for_profile and PROFILE_ADDRESS.search(text_of(lowered, level)):
            return {k: str(v) for k, v in customer["address"].items()}, []
    return None, []


def _referenced_address(
    text: str,
    lowered: str,
    stretch: tuple[int, int],
    level: tuple[int, int],
    orders: Sequence[Order],
) -> dict[str, str] | None:
    """The shipping address of the one order a reference names (by id, by what it holds, by
    its city, or the customer's only order), else None."""
    words = text[stretch[0] : stretch[1] + 30]
    ids = _ids_in(words, (0, len(words)))
    names = sorted({i["name"] for o in orders for i in o["items"]})
    mentioned = catalogue.product_spans(words, names)
    if not ids and not mentioned:  # "my order with the tablet ... got shipped to my Chicago place"
        words = text[max(level[0], stretch[0] - 120) : stretch[0]]
        ids = _ids_in(words, (0, len(words)))
        mentioned = catalogue.product_spans(words, names)
    picked = [o for o in orders if o["order_id"] in ids] or [
        o for o in orders if mentioned and all(_holds(o, m.names) for m in mentioned)
    ]
    if not picked and not ids and not mentioned:
        scope = text_of(lowered, level)
        cities = [o for o in orders if o["address"]["city"].lower() in scope]
        picked = cities if len({o["address"]["address1"] for o in cities}) == 1 else []
        if not picked and len(orders) == 1:
            picked = list(orders)
    if len({o["address"]["address1"] for o in picked}) == 1:
        return {k: str(v) for k, v in picked[0]["address"].items()}
    return None
