"""Check: which of the store's products and option values a customer's words name.

The catalogue is the store's own: the products of the customer's orders, their variants and the
option values those variants have (what ``get_order`` and ``get_product`` return). A message is
matched against it, never against a list of sentence forms: "the speaker", "my tee", "the 8
inch model", "one size up", "the one that isn't waterproof" are read as a product named, an
option value named, a step along an option's real values, a value denied. Near-misses of a word
("speeker", "headphons") are caught with ``rapidfuzz``'s edit-distance ratio; a word that could
name two products ("kettle", "camera") names both, and the customer's orders decide.

Positions are kept (``start``, ``end`` in the text) so that the policy can tell which request of
a message a word belongs to.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from rapidfuzz import fuzz

# What customers call products, beyond the words of the product's name.
NICKNAMES: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t shirt", "tshirt", "tee", "shirt"),
    "smartphone": ("smart phone", "phone", "cellphone"),
    "wristwatch": ("wrist watch", "watch"),
    "smart watch": ("smartwatch", "watch"),
    "wireless earbuds": ("earbuds", "ear buds", "earphones", "buds"),
    "headphones": ("headphone", "headset"),
    "e-reader": ("ereader", "reader", "kindle"),
    "running shoes": ("runners", "shoes", "trainers"),
    "sneakers": ("sneaker", "shoes", "trainers"),
    "hiking boots": ("boots", "boot"),
    "portable charger": ("power bank", "powerbank", "charger"),
    "electric kettle": ("kettle",),
    "tea kettle": ("kettle", "teakettle"),
    "coffee maker": ("coffee machine", "coffeemaker"),
    "espresso machine": ("espresso maker", "coffee machine"),
    "bicycle": ("bike",),
    "cycling helmet": ("bike helmet", "bicycle helmet", "helmet"),
    "luggage set": ("luggage", "suitcase", "suitcases"),
    "led light bulb": ("light bulb", "bulb", "bulbs"),
    "indoor security camera": ("security camera", "camera"),
    "action camera": ("camera", "gopro"),
    "digital camera": ("camera",),
    "gaming mouse": ("mouse",),
    "wireless mouse": ("mouse",),
    "mechanical keyboard": ("keyboard",),
    "bluetooth speaker": ("speaker",),
    "jigsaw puzzle": ("puzzle",),
    "dumbbell set": ("dumbbells", "dumbbell", "weights"),
    "makeup kit": ("make up kit", "makeup"),
    "perfume": ("cologne", "fragrance"),
    "patio umbrella": ("umbrella",),
    "garden hose": ("hose",),
    "air purifier": ("purifier",),
    "vacuum cleaner": ("vacuum",),
    "smart thermostat": ("thermostat",),
    "wall clock": ("clock",),
    "desk lamp": ("lamp",),
    "office chair": ("chair",),
    "pet bed": ("dog bed", "cat bed"),
    "water bottle": ("bottle",),
    "yoga mat": ("mat",),
    "fleece jacket": ("fleece", "jacket"),
    "rain jacket": ("jacket", "raincoat"),
    "grill": ("bbq", "barbecue"),
    "tablet": ("ipad",),
    "travel mug": ("mug",),
    "cast iron skillet": ("skillet", "pan"),
    "phone case": ("phone cover", "case"),
    "bed sheets": ("sheets", "sheet"),
    "coffee grinder": ("grinder",),
}
# Last words that name no product on their own ("the set", "the machine").
GENERIC = {"set", "kit", "machine", "maker", "bulb", "case", "bed", "mat", "cleaner", "pro"}
UNITS: dict[str, str] = {
    "inch": r"(?:inch(?:es)?|in\b|\"|”)",
    "inches": r"(?:inch(?:es)?|in\b|\"|”)",
    "ml": r"(?:ml|milliliters?|millilitres?)",
    "l": r"(?:l|liters?|litres?)",
    "liter": r"(?:l|liters?|litres?)",
    "liters": r"(?:l|liters?|litres?)",
    "hours": r"(?:hours?|hrs?|h)",
    "gb": r"(?:gb|gigs?)",
    "tb": r"(?:tb)",
    "ft": r"(?:ft|foot|feet|')",
    "mah": r"(?:mah)",
    "mp": r"(?:mp|megapixels?)",
    "bar": r"(?:bar)",
    "lbs": r"(?:lbs?|pounds?)",
    "mm": r"(?:mm)",
    "oz": r"(?:oz|ounces?)",
    "w": r"(?:w|watts?)",
    "x": r"(?:x)",
    "cups": r"(?:cups?)",
    "cup": r"(?:cups?)",
    "degrees": r"(?:degrees?|°)",
    "piece": r"(?:pieces?|pc|pcs)",
}
SIZE_LETTERS = ["xxs", "xs", "s", "m", "l", "xl", "xxl", "xxxl"]
SIZE_WORDS = {
    "xs": r"extra[ -]?small|x-?small",
    "s": r"small",
    "m": r"medium",
    "l": r"large",
    "xl": r"extra[ -]?large|x-?large",
    "xxl": r"extra[ -]?extra[ -]?large|xx-?large|2xl|double[ -]?xl",
}
WORD_SIZES = ["extra small", "small", "medium", "large", "extra large", "portable"]
# Words before a value that deny it: "not black", "isn't waterproof", "instead of the black".
DENIAL = re.compile(
    r"(?:\bnot|n't|\bno|\bnon|\bwithout|\binstead of|\brather than|\bother than|\bexcept|"
    r"\bisn'?t|\baren'?t|\bnor)\s+(?:(?:a|an|the|my|in|one|ones|that|it|so|very|really|"
    r"actually|any|more)\s+){0,3}$"
)


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass(frozen=True)
class ProductSpan(Span):
    """Words that name a product (by its lower-case name): "my tee" names "t-shirt"."""

    names: frozenset[str]


@dataclass(frozen=True)
class ValueSpan(Span):
    """Words that name an option value of a product: "the 8 inch one" names screen size
    8-inch. ``denied``: the words deny it ("not waterproof")."""

    product_id: str
    option: str
    value: str
    denied: bool


@dataclass(frozen=True)
class StepSpan(Span):
    """A step along an option's values: "one size up" (+1), "a smaller capacity" (-1); the
    option when the words name one."""

    step: int
    option_words: str | None


def folded(text: str) -> str:
    """Lower case, with the characters that differ in spelling only made alike, the same length
    as ``text`` so that positions carry over."""
    table: dict[str, str | int | None] = {"’": "'", "‘": "'", "_": " ", "–": "-"}
    return text.lower().translate(str.maketrans(table))


# --- products ----------------------------------------------------------------------------------


def _aliases(name: str) -> set[str]:
    lowered = name.lower()
    found = {lowered, lowered.replace("-", " "), lowered.replace("-", "")}
    words = lowered.replace("-", " ").split()
    if len(words) > 1 and words[-1] not in GENERIC and len(words[-1]) >= 4:
        found.add(words[-1])
    found.update(NICKNAMES.get(lowered, ()))
    return found


def _plural(alias: str) -> str:
    if alias.endswith(("s", "x", "ch", "sh")):
        return rf"{re.escape(alias)}(?:es)?"
    if alias.endswith("y") and alias[-2:-1] not in "aeiou":
        return rf"(?:{re.escape(alias)}|{re.escape(alias[:-1])}ies)"
    return rf"{re.escape(alias)}s?"


def product_spans(text: str, names: Iterable[str]) -> list[ProductSpan]:
    """Every place the text names one of the products ``names`` (longest words first: "bike
    helmet" is a helmet, not a bike), with near-misses of one-word names."""
    lowered = folded(text)
    by_alias: dict[str, set[str]] = {}
    for name in names:
        for alias in _aliases(name):
            by_alias.setdefault(alias, set()).add(name.lower())
    spans: list[ProductSpan] = []
    taken: list[tuple[int, int]] = []
    for alias in sorted(by_alias, key=len, reverse=True):
        pattern = _plural(alias).replace(r"\ ", r"[\s-]?")
        for match in re.finditer(rf"(?<![\w-]){pattern}(?![\w])", lowered):
            if any(a < match.end() and match.start() < b for a, b in taken):
                continue
            taken.append(match.span())
            spans.append(ProductSpan(match.start(), match.end(), frozenset(by_alias[alias])))
    singles = {a: n for a, n in by_alias.items() if " " not in a and len(a) >= 5}
    for match in re.finditer(r"[a-z]{5,}", lowered):
        if any(a < match.end() and match.start() < b for a, b in taken):
            continue
        word = match.group(0)
        for alias, named in singles.items():
            if abs(len(alias) - len(word)) <= 2 and fuzz.ratio(word, alias) >= 85:
                taken.append(match.span())
                spans.append(ProductSpan(match.start(), match.end(), frozenset(named)))
                break
    return sorted(spans, key=lambda s: s.start)


# --- option values -----------------------------------------------------------------------------


def _number_pattern(value: str) -> str | None:
    """A value that is a number with a unit ("13-inch", "1.5L", "20 hours", "1TB SSD"), as a
    pattern that also takes "13 inch", '13"', "1.5 liters", "20-hour", "1tb"."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*-?\s*([a-z\"']+)(?:\s+(.+))?", value.lower())
    if match is None:
        return None
    number, unit, rest = match.groups()
    unit_pattern = UNITS.get(unit, re.escape(unit))
    tail = rf"(?:[\s-]+{re.escape(rest)})?" if rest else ""
    return rf"(?<![\d.]){re.escape(number)}[\s-]*{unit_pattern}{tail}(?![a-z])"


def _value_patterns(value: str, option: str, values: set[str]) -> list[tuple[str, int]]:
    """Patterns for ``value`` of ``option`` and the flags to match them with."""
    lowered = value.lower()
    if lowered in SIZE_LETTERS and option.lower() == "size":
        patterns = [
            (rf"(?<![\w'’]){re.escape(value.upper())}(?![\w'’])", 0),
            (rf"\bsize\s+{re.escape(lowered)}\b", re.I),
        ]
        if lowered in SIZE_WORDS:
            words = SIZE_WORDS[lowered]
            patterns.append(
                (rf"\b(?:size\s+|an?\s+|in\s+(?:an?\s+)?|to\s+(?:an?\s+)?)(?:{words})\b", re.I)
            )
            patterns.append((rf"\b(?:{words})(?=\s+(?:size|one|version|instead))", re.I))
        return patterns
    if re.fullmatch(r"\d+", lowered):
        name = re.escape(option.lower()).replace(r"\ ", r"\s+")
        return [
            (rf"\b(?:{name}|sz)\s*[:#]?\s*{lowered}\b(?!\.\d|\d)", re.I),
            (rf"(?<![\d.,$#])\b{lowered}\s*-?\s*{name}", re.I),
            (
                rf"\b(?:an?|the|to|for)\s+{lowered}s?\b(?!\.\d|[\d%-])(?!\s*(?:dollars|days|weeks))",
                re.I,
            ),
        ]
    if lowered in ("yes", "no"):
        name = re.escape(option.lower()).replace(r"\ ", r"[\s-]*")
        if "water" in option.lower():  # "waterproof", "water resistant": one thing to customers
            name = r"water[\s-]*(?:proof|resist(?:ance|ant))"
        return [(rf"\b(?:non[\s-]*)?{name}\b", re.I)]  # denied words make it "no"
    if lowered in ("none", "not resistant"):
        name = re.escape(option.lower()).replace(r"\ ", r"[\s-]*")
        return [(rf"\b(?:no|without|non)[\s-]+(?:\w+[\s-]+)?{name.split('[')[0]}\w*", re.I)]
    number = _number_pattern(value)
    if number is not None:
        return [(number, re.I)]
    if lowered in WORD_SIZES and "size" in option.lower():
        return [
            (
                rf"\b(?:size\s+|an?\s+|in\s+(?:an?\s+)?|to\s+(?:an?\s+)?|the\s+){re.escape(lowered)}\b",
                re.I,
            ),
            (rf"\b{re.escape(lowered)}(?=\s+(?:size|one|version|instead|model))", re.I),
        ]
    spelled = re.escape(lowered).replace(r"\ ", r"[\s-]*").replace(r"\-", r"[\s-]*")
    spelled = spelled.replace("grey", "gr[ae]y").replace("gray", "gr[ae]y")
    spelled = spelled.replace(r"wi[\s-]*fi", r"wi[\s-]*fi").replace(r"\+", r"\+?")
    return [(rf"(?<![\w-]){spelled}(?![\w])", re.I)]


def value_spans(text: str, product: Mapping[str, Any]) -> list[ValueSpan]:
    """Every place the text names an option value of ``product`` (as ``get_product`` returns
    it), with whether the words around deny it."""
    lowered = folded(text)
    values: dict[str, set[str]] = {}
    for variant in product["variants"].values():
        for option, value in variant["options"].items():
            values.setdefault(option, set()).add(str(value))
    found: list[ValueSpan] = []
    for option, option_values in values.items():
        for value in option_values:
            for pattern, flags in _value_patterns(value, option, option_values):
                for match in re.finditer(pattern, text if flags == 0 else lowered, flags):
                    before = lowered[max(0, match.start() - 40) : match.start()]
                    denied = bool(DENIAL.search(before))
                    if value.lower() in ("yes", "no"):
                        said = match.group(0)
                        negative = denied or bool(re.match(r"non", said))
                        # "waterproof" names yes; "not waterproof" names no.
                        named = "no" if negative else "yes"
                        if named != value.lower():
                            continue
                        denied = False
                    found.append(
                        ValueSpan(
                            match.start(),
                            match.end(),
                            str(product["product_id"]),
                            option,
                            value,
                            denied,
                        )
                    )
    exact = {(s.option, s.value) for s in found}
    for option, option_values in values.items():
        for value in option_values:
            if (option, value) not in exact and _spelled_out(value):
                for start, end in _near_misses(lowered, value.lower()):
                    denied = bool(DENIAL.search(lowered[max(0, start - 40) : start]))
                    found.append(
                        ValueSpan(start, end, str(product["product_id"]), option, value, denied)
                    )
    # One place names one value: the longest ("rose gold", not "gold"; "2 liters", not "2").
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[ValueSpan] = []
    for span in found:
        inside = [k for k in kept if k.start <= span.start and span.end <= k.end]
        if inside and (inside[0].end - inside[0].start) > (span.end - span.start):
            continue
        kept.append(span)
    return kept


def _spelled_out(value: str) -> bool:
    """A value long enough, and made of words, for a near-miss to be a misspelling of it."""
    return len(value) >= 6 and not re.search(r"\d", value) and value.lower() not in ("yes", "no")


def _near_misses(lowered: str, value: str) -> list[tuple[int, int]]:
    """Where the text spells ``value`` nearly right ("wireles charging" for "wireless
    charging"), word for word."""
    size = len(value.split())
    words = list(re.finditer(r"[a-z][a-z'-]*", lowered))
    found = []
    for i in range(len(words) - size + 1):
        start, end = words[i].start(), words[i + size - 1].end()
        said = lowered[start:end]
        if said != value and abs(len(said) - len(value)) <= 2 and fuzz.ratio(said, value) >= 88:
            found.append((start, end))
    return found


# --- steps along an option ---------------------------------------------------------------------

# Options a customer steps along, by the words they use for them.
STEP_OPTIONS = (
    r"screen size|weight range|battery life|piece count|size|capacity|length|height|storage|"
    r"screen|weight|thickness|diameter|pressure|resolution|zoom|pieces|ram|memory|range"
)
STEP = re.compile(
    rf"\b(?:(?:one|a|1)\s+)?(?:({STEP_OPTIONS})\s+)?"
    r"(up|down|bigger|larger|smaller|higher|lower|longer|shorter|more|less)\b"
    rf"(?:\s+(?:in|on|of)?\s*(?:the\s+)?({STEP_OPTIONS}|one|version))?"
    rf"|\bnext\s+({STEP_OPTIONS})\s+(up|down)(?:\s+(?:in|on)\s+({STEP_OPTIONS}))?"
    rf"|\bnext\s+(bigger|larger|smaller|higher|lower)\s*({STEP_OPTIONS}|one)?"
    rf"|\b(bigger|larger|smaller|higher|lower|longer|shorter)\s+({STEP_OPTIONS}|one|version|model)"
    rf"|\b(?:one\s+|a\s+)?step\s+(up|down)(?:\s+(?:in|on)\s+({STEP_OPTIONS}))?",
    re.I,
)
UP = {"up", "bigger", "larger", "higher", "longer", "more"}


def step_spans(text: str) -> list[StepSpan]:
    """Every "one size up", "next capacity up", "the bigger one", "a size smaller" in the text."""
    found = []
    for match in STEP.finditer(folded(text)):
        words = [g for g in match.groups() if g]
        direction = next(
            (w for w in words if w in UP or w in {"down", "smaller", "lower", "shorter", "less"}),
            None,
        )
        if direction is None:
            continue
        said = match.group(0)
        if re.fullmatch(r"(?:up|down|more|less)", said.strip()):
            continue  # "up" alone is no step ("pick it up", "more than")
        named = [w for w in words if re.fullmatch(STEP_OPTIONS, w)]
        option = named[-1] if named else None  # "next size up in capacity": capacity
        if direction in {"more", "less"} and option is None:
            continue
        found.append(StepSpan(match.start(), match.end(), 1 if direction in UP else -1, option))
    return found


def _magnitude(value: str) -> Decimal | None:
    lowered = value.lower()
    if lowered in SIZE_LETTERS:
        return Decimal(SIZE_LETTERS.index(lowered))
    if lowered in WORD_SIZES:
        return Decimal(WORD_SIZES.index(lowered))
    if re.fullmatch(r"a\d", lowered):  # paper: A4 is bigger than A5
        return -Decimal(lowered[1])
    number = re.match(r"(\d+(?:\.\d+)?)", lowered)
    if number is None:
        return None
    try:
        amount = Decimal(number.group(1))
    except InvalidOperation:
        return None
    return amount * 1000 if re.search(r"\d\s*tb", lowered) else amount


def ordered_values(product: Mapping[str, Any], option: str) -> list[str] | None:
    """The option's values from smallest to largest, when they have an order (sizes, numbers
    with units), else None."""
    values = {
        str(v["options"][option]) for v in product["variants"].values() if option in v["options"]
    }
    magnitudes = {v: _magnitude(v) for v in values}
    if not values or any(m is None for m in magnitudes.values()):
        return None
    return sorted(values, key=lambda v: magnitudes[v] or Decimal(0))


def stepped(product: Mapping[str, Any], option: str, current: str, step: int) -> str | None:
    """The value ``step`` places from ``current`` along the option's order, if there is one."""
    order = ordered_values(product, option)
    if order is None or current not in order:
        return None
    at = order.index(current) + step
    return order[at] if 0 <= at < len(order) else None


def step_option(product: Mapping[str, Any], words: str | None) -> str | None:
    """The option a step is along: the one its words name ("capacity"), else the product's one
    ordered option called size, or its only ordered option."""
    options = {str(k) for v in product["variants"].values() for k in v["options"]}
    ordered = [o for o in sorted(options) if ordered_values(product, o) is not None]
    if words and words not in ("one", "version"):
        named = [o for o in ordered if words in o.lower() or o.lower() in words]
        if len(named) == 1:
            return named[0]
        if words == "size":
            sized = [o for o in ordered if "size" in o]
            return sized[0] if len(sized) == 1 else (ordered[0] if len(ordered) == 1 else None)
    return ordered[0] if len(ordered) == 1 else None


# --- variants ----------------------------------------------------------------------------------


def variants_with(product: Mapping[str, Any], options: Mapping[str, str]) -> list[dict[str, Any]]:
    """The product's variants whose options are exactly ``options``."""
    return [
        dict(v)
        for v in product["variants"].values()
        if {k: str(x) for k, x in v["options"].items()} == dict(options)
    ]
