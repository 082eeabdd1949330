"""Find: every candidate a customer's message offers, before anything is decided.

The policy finds, checks, then decides (STYLE, Do 13). This module is the first step and reads
only the text: every email, every 5-digit zip code, every pair of words that could be a name,
every order id, every address. It keeps all of them, however unlikely; the CRM says which ones
name a customer (``identity_lookups``, checked by the graph's triage), and the catalogue which
words name an item or an option (``orchestrator.catalogue``). Nothing here guesses which
candidate is the right one.

Addresses are read by ``usaddress`` (a conditional random field trained on US addresses, its
model shipped in the package) on each stretch of the text from a house number to a zip code:
it reads "445 elm st suite 200 austin tx 78701" and "9 Ocean Drive, Unit 12, Miami, FL 33139"
alike, where a regular expression per form did not.
"""

import re
from dataclasses import dataclass

import usaddress  # type: ignore[import-untyped]

ORDER_ID = re.compile(r"#?\b(W\d{7})\b", re.I)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
ZIP = re.compile(r"(?<![\d$.,#-])\b(\d{5})(?:-\d{4})?\b(?![.,]\d|\s*(?:mah|ml|mm)\b)", re.I)
WORD = re.compile(r"[A-Za-zÀ-ÖØ-öø-ÿ][A-Za-zÀ-ÖØ-öø-ÿ'’-]*")
# Words that begin a sentence or sign a message in capitals, and are nobody's name.
NOT_NAMES = frozenset(
    [
        "hi",
        "hello",
        "hey",
        "dear",
        "thanks",
        "thank",
        "you",
        "best",
        "regards",
        "kind",
        "warm",
        "cheers",
        "sincerely",
        "yours",
        "regards",
        "please",
        "order",
        "orders",
        "my",
        "the",
        "a",
        "an",
        "i",
        "im",
        "i'm",
        "it",
        "its",
        "this",
        "that",
        "there",
        "here",
        "and",
        "or",
        "but",
        "so",
        "support",
        "team",
        "customer",
        "service",
        "store",
        "shop",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "also",
        "just",
        "ok",
        "okay",
        "sorry",
        "hope",
        "hopefully",
        "again",
        "yes",
        "no",
        "not",
        "new",
        "old",
        "cancel",
        "return",
        "exchange",
        "refund",
        "change",
        "modify",
        "update",
        "ship",
        "shipping",
        "address",
        "zip",
        "code",
        "email",
        "account",
        "name",
        "thx",
        "ty",
        "regards,",
        "love",
        "from",
        "sent",
        "iphone",
        "android",
        "mobile",
    ]
)
# What introduces a name, whatever its case: "my name is jane doe", "this is Jane Doe".
NAME_CUE = re.compile(
    r"\b(?:my name(?:'s| is)|name(?:'s| is)|this is|i am|i'm|im|it'?s|me:|from:|signed,?)\s+"
    r"|(?:^|[.,;!?]\s*)name\s*:?\s+"
    # "hello, emma silva, dallas tx 75217": two words after a greeting, then a stop
    r"|^\s*(?:hi|hello|hey)(?: there)?\s*[,!-]\s*(?=[a-z][\w'’-]+\s+[a-z][\w'’-]+\s*[,.\n])",
    re.I | re.M,
)
STATES = {
    "alabama": "AL", "alaska": "AK", "arizona": "AZ", "arkansas": "AR", "california": "CA",
    "colorado": "CO", "connecticut": "CT", "delaware": "DE", "florida": "FL", "georgia": "GA",
    "hawaii": "HI", "idaho": "ID", "illinois": "IL", "indiana": "IN", "iowa": "IA",
    "kansas": "KS", "kentucky": "KY", "louisiana": "LA", "maine": "ME", "maryland": "MD",
    "massachusetts": "MA", "michigan": "MI", "minnesota": "MN", "mississippi": "MS",
    "missouri": "MO", "montana": "MT", "nebraska": "NE", "nevada": "NV", "new hampshire": "NH",
    "new jersey": "NJ", "new mexico": "NM", "new york": "NY", "north carolina": "NC",
    "north dakota": "ND", "ohio": "OH", "oklahoma": "OK", "oregon": "OR",
    "pennsylvania": "PA", "rhode island": "RI", "south carolina": "SC", "south dakota": "SD",
    "tennessee": "TN", "texas": "TX", "utah": "UT", "vermont": "VT", "virginia": "VA",
    "washington": "WA", "west virginia": "WV", "wisconsin": "WI", "wyoming": "WY",
    "district of columbia": "DC",
}  # fmt: skip
MAX_NAMES = 12
MAX_LOOKUPS = 24  # find_customer calls one message may cost


@dataclass(frozen=True)
class Lookup:
    """One way the message could name its sender: an email, or a name and a zip code."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    zip: str | None = None

    def arguments(self) -> dict[str, str]:
        """``find_customer``'s arguments."""
        if self.email is not None:
            return {"email": self.email}
        assert self.first_name and self.last_name and self.zip
        return {"first_name": self.first_name, "last_name": self.last_name, "zip": self.zip}


def emails(text: str) -> list[str]:
    return list(dict.fromkeys(e.lower().rstrip(".") for e in EMAIL.findall(text)))


def zips(text: str) -> list[str]:
    """Every 5-digit number that could be a zip code: not inside an order id, a price, a
    phone number or a quantity ("20000mAh")."""
    return list(dict.fromkeys(m.group(1) for m in ZIP.finditer(text)))


def order_ids(text: str) -> list[str]:
    return list(dict.fromkeys(f"#{m.upper()}" for m in ORDER_ID.findall(text)))


def _pairs(words: list[str]) -> list[tuple[str, str]]:
    """A run of two or three words as (first, last) names: "Mary Ann Lee" gives (Mary, Ann),
    (Ann, Lee) and (Mary, Lee)."""
    found = []
    for i in range(len(words) - 1):
        found.append((words[i], words[i + 1]))
        if i + 2 < len(words):
            found.append((words[i], words[i + 2]))
    return found


def _nameish(word: str) -> bool:
    return word.lower().strip("'’-") not in NOT_NAMES and len(word) > 1


def names(text: str) -> list[tuple[str, str]]:
    """Every (first, last) pair of words that could be the sender's name, most likely first:
    after "my name is", "this is", …; a short line of two or three words (a signature), later
    lines first; then any two capitalised words in a row."""
    cued: list[tuple[str, str]] = []
    # Two words just before "here" or a zip code, whatever their case: "anya taylor here",
    # "jane doe 12345", "Jane Doe (zip 12345)".
    for match in re.finditer(
        r"(?:^|[\s,:;(-])([A-Za-z][\w'’-]+)\s+([A-Za-z][\w'’-]+)\s*"
        r"(?=here\b|,?\s*\(?(?:zip(?: code)?\s*(?:is\s*)?:?\s*)?\d{5}\b)",
        text,
        re.I,
    ):
        words = [w for w in match.groups() if _nameish(w)]
        if len(words) == 2:
            cued.append((words[0], words[1]))
    for match in NAME_CUE.finditer(text):
        words = WORD.findall(text[match.end() : match.end() + 60])[:3]
        cued.extend(_pairs([w for w in words if _nameish(w)][:3]))
    signed: list[tuple[str, str]] = []
    for line in reversed(text.splitlines()):
        words = WORD.findall(line)
        inverted = re.fullmatch(r"\s*([A-Za-z][\w'’-]+),\s*([A-Za-z][\w'’-]+)\s*", line)
        if inverted and all(_nameish(w) for w in inverted.groups()):
            signed.append((inverted.group(2), inverted.group(1)))  # "GONZALEZ, Amelia"
        if 2 <= len(words) <= 4:
            signed.extend(_pairs([w for w in words if _nameish(w)][:3]))
    capitalised: list[tuple[str, str]] = []
    for match in re.finditer(
        r"(?:\b[A-Z][a-zà-ÿ'’-]+\b[ \t]+){1,2}\b[A-Z][a-zà-ÿ'’-]+\b|\b[A-Z]{2,}[ \t]+[A-Z]{2,}\b",
        text,
    ):
        words = [w for w in WORD.findall(match.group(0)) if _nameish(w)]
        capitalised.extend(_pairs(words))
    ordered = dict.fromkeys(
        (first.title(), last.title())
        for first, last in [*cued, *signed, *capitalised]
        if first.lower() != last.lower()
    )
    return list(ordered)[:MAX_NAMES]


def identity_lookups(text: str) -> list[Lookup]:
    """The ``find_customer`` calls that could identify the sender: each email, then each
    candidate name with each zip code, at most ``MAX_LOOKUPS``."""
    lookups = [Lookup(email=e) for e in emails(text)]
    for first, last in names(text):
        for code in zips(text):
            lookups.append(Lookup(first_name=first, last_name=last, zip=code))
    return lookups[:MAX_LOOKUPS]


# --- addresses --------------------------------------------------------------------------------

ADDRESS_SPAN = re.compile(
    r"(?<![\w#$])\d{1,6}[A-Za-z]?\s+[^\n\d]{0,4}\w[^@]{2,120}?\b\d{5}(?:-\d{4})?\b", re.S
)
UNIT_BEFORE = re.compile(
    r"\b(?:apt|apartment|unit|suite|ste|floor|fl|room|rm|no|number|building|bldg)\.?\s*#?\s*$", re.I
)
STREET_PARTS = (
    "AddressNumberPrefix",
    "AddressNumber",
    "AddressNumberSuffix",
    "StreetNamePreModifier",
    "StreetNamePreDirectional",
    "StreetNamePreType",
    "StreetName",
    "StreetNamePostType",
    "StreetNamePostDirectional",
)


def _clean(text: str) -> str:
    return " ".join(text.replace("\n", " ").split()).strip(" ,.;:")


def _state(text: str) -> str | None:
    cleaned = _clean(text).replace(".", "")
    if len(cleaned) == 2 and cleaned.isalpha():
        return cleaned.upper()
    return STATES.get(cleaned.lower())


def addresses(text: str) -> list[dict[str, str]]:
    """Every full US address in the text (street, city, state, zip; unit if any), as the CRM's
    address fields, in the order written."""
    found: list[dict[str, str]] = []
    for match in ADDRESS_SPAN.finditer(text):
        span = match.group(0)
        # The shortest stretch that ends at this zip and still parses: a house number earlier
        # in the sentence ("2 items ... 44 Oak St") must not become the street's.
        starts = [
            m.start()
            for m in re.finditer(r"(?<![\w#$])\d{1,6}[A-Za-z]?\s", span)
            if not UNIT_BEFORE.search(span[: m.start()])  # "Unit 12" is no house number
        ]
        for start in reversed(starts):
            parsed = _parse_address(span[start:])
            if parsed is not None:
                found.append(parsed)
                break
    return found


def _parse_address(span: str) -> dict[str, str] | None:
    try:
        tags, kind = usaddress.tag(span)
    except usaddress.RepeatedLabelError:
        return None
    if kind != "Street Address":
        return None
    parts: dict[str, str] = {k: _clean(v) for k, v in tags.items()}
    if not all(parts.get(k) for k in ("AddressNumber", "StreetName", "PlaceName", "ZipCode")):
        return None
    state = _state(parts.get("StateName", ""))
    if state is None:
        return None
    unit = " ".join(
        parts[k] for k in ("OccupancyType", "OccupancyIdentifier", "SubaddressType",
                           "SubaddressIdentifier") if parts.get(k)
    )  # fmt: skip
    return {
        "address1": " ".join(parts[k] for k in STREET_PARTS if parts.get(k)),
        "address2": unit,
        "city": parts["PlaceName"],
        "state": state,
        "country": "USA",
        "zip": parts["ZipCode"][:5],
    }
