"""Build the demo store: ``python -m clients.demo_data.build_store`` writes ``store/db.json``.

A store of our own in the retail format of tau2-bench (``servers/crm/retail_format.py`` reads
it): 20 products, 60 customers and 180 orders covering every order status. Every record is made
here from a fixed seed, so the file is the same on every run and the support tickets in
``tests/data/tickets.jsonl`` can name its ids.

The order records follow what the CRM's actions leave behind (``servers/crm/orders.py``):
a cancelled order has its refund and reason, an item-modified one the payment (or refund) of
the price difference, a return or exchange request its items and payment method. Four
customers are VIPs (lifetime spend, the payments of their orders that are not cancelled, of at
least $1,500); every other customer stays below that.
"""

import json
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

SEED = 7
OUT = Path(__file__).parent / "store" / "db.json"
VIP_THRESHOLD = Decimal("1500")
CENT = Decimal("0.01")

# name, option names, variants as (option values, price, available)
CATALOGUE: list[tuple[str, tuple[str, ...], list[tuple[tuple[str, ...], str, bool]]]] = [
    (
        "Travel Mug",
        ("color", "capacity"),
        [
            (("black", "12 oz"), "19.99", True),
            (("white", "12 oz"), "19.99", True),
            (("red", "16 oz"), "24.50", True),
            (("black", "16 oz"), "24.50", True),
            (("sage", "20 oz"), "28.75", False),
        ],
    ),
    (
        "Desk Lamp",
        ("finish", "bulb"),
        [
            (("brass", "led"), "89.00", True),
            (("matte black", "led"), "74.95", True),
            (("matte black", "halogen"), "59.95", False),
            (("white", "led"), "72.40", True),
        ],
    ),
    (
        "Wireless Earbuds",
        ("color", "case"),
        [
            (("black", "standard"), "79.99", True),
            (("white", "standard"), "79.99", True),
            (("black", "wireless charging"), "109.99", True),
            (("white", "wireless charging"), "109.99", False),
            (("navy", "wireless charging"), "114.50", True),
        ],
    ),
    (
        "Running Shoes",
        ("size", "color"),
        [
            (("8", "black"), "119.95", True),
            (("9", "black"), "119.95", True),
            (("10", "black"), "119.95", True),
            (("9", "blue"), "124.00", True),
            (("10", "blue"), "124.00", False),
            (("11", "gray"), "112.80", True),
        ],
    ),
    (
        "Rain Jacket",
        ("size", "color"),
        [
            (("s", "yellow"), "129.00", True),
            (("m", "yellow"), "129.00", True),
            (("m", "navy"), "139.50", True),
            (("l", "navy"), "139.50", True),
            (("xl", "olive"), "134.25", False),
        ],
    ),
    (
        "Backpack",
        ("capacity", "color"),
        [
            (("20l", "black"), "64.99", True),
            (("20l", "gray"), "64.99", True),
            (("30l", "black"), "89.99", True),
            (("30l", "green"), "92.40", False),
        ],
    ),
    (
        "Coffee Grinder",
        ("type", "color"),
        [
            (("blade", "black"), "34.99", True),
            (("blade", "white"), "34.99", True),
            (("burr", "black"), "149.00", True),
            (("burr", "stainless steel"), "179.50", True),
            (("burr", "white"), "152.30", False),
        ],
    ),
    (
        "Yoga Mat",
        ("thickness", "color"),
        [
            (("4mm", "purple"), "32.00", True),
            (("4mm", "black"), "32.00", True),
            (("6mm", "teal"), "45.50", True),
            (("6mm", "black"), "45.50", True),
            (("8mm", "gray"), "58.75", False),
        ],
    ),
    (
        "Water Bottle",
        ("capacity", "material"),
        [
            (("500ml", "plastic"), "14.99", True),
            (("750ml", "stainless steel"), "29.95", True),
            (("1000ml", "stainless steel"), "36.50", True),
            (("750ml", "glass"), "27.80", False),
        ],
    ),
    (
        "Bluetooth Speaker",
        ("color", "power"),
        [
            (("black", "10w"), "49.99", True),
            (("red", "10w"), "49.99", True),
            (("black", "20w"), "89.00", True),
            (("blue", "20w"), "92.75", True),
            (("black", "40w"), "189.99", False),
            (("green", "40w"), "194.20", True),
        ],
    ),
    (
        "Office Chair",
        ("color", "armrests"),
        [
            (("black", "fixed"), "219.00", True),
            (("black", "adjustable"), "289.00", True),
            (("gray", "adjustable"), "299.50", True),
            (("blue", "none"), "184.99", False),
        ],
    ),
    (
        "Mechanical Keyboard",
        ("switch", "layout"),
        [
            (("linear", "full size"), "129.99", True),
            (("tactile", "full size"), "134.99", True),
            (("clicky", "full size"), "129.99", False),
            (("tactile", "tenkeyless"), "119.50", True),
            (("linear", "60%"), "98.00", True),
        ],
    ),
    (
        "Wireless Mouse",
        ("color", "connection"),
        [
            (("black", "bluetooth"), "39.99", True),
            (("white", "bluetooth"), "39.99", True),
            (("black", "usb receiver"), "29.99", True),
            (("gray", "usb receiver"), "31.25", False),
        ],
    ),
    (
        "Smart Watch",
        ("strap", "size"),
        [
            (("silicone", "41mm"), "249.00", True),
            (("silicone", "45mm"), "279.00", True),
            (("leather", "41mm"), "299.00", True),
            (("leather", "45mm"), "329.00", False),
            (("metal", "45mm"), "379.99", True),
        ],
    ),
    (
        "Electric Kettle",
        ("capacity", "color"),
        [
            (("1l", "white"), "34.95", True),
            (("1.7l", "white"), "44.95", True),
            (("1.7l", "stainless steel"), "59.99", True),
            (("1.7l", "black"), "57.80", False),
        ],
    ),
    (
        "Cast Iron Skillet",
        ("size",),
        [
            (("8 inch",), "22.99", True),
            (("10 inch",), "29.99", True),
            (("12 inch",), "39.99", True),
            (("15 inch",), "64.50", False),
        ],
    ),
    (
        "Hiking Boots",
        ("size", "material"),
        [
            (("8", "leather"), "189.00", True),
            (("9", "leather"), "189.00", True),
            (("10", "leather"), "189.00", False),
            (("9", "synthetic"), "149.95", True),
            (("10", "synthetic"), "149.95", True),
            (("11", "synthetic"), "152.40", True),
        ],
    ),
    (
        "Sunglasses",
        ("frame", "lens"),
        [
            (("black", "polarized"), "129.00", True),
            (("tortoise", "polarized"), "139.00", True),
            (("black", "non-polarized"), "79.00", True),
            (("gold", "mirrored"), "159.50", False),
        ],
    ),
    (
        "Phone Case",
        ("model", "color"),
        [
            (("iphone 15", "clear"), "19.99", True),
            (("iphone 15", "black"), "24.99", True),
            (("pixel 8", "black"), "22.50", True),
            (("galaxy s24", "blue"), "23.75", True),
            (("galaxy s24", "clear"), "19.99", False),
        ],
    ),
    (
        "Bed Sheets",
        ("size", "thread count"),
        [
            (("queen", "300"), "69.00", True),
            (("queen", "600"), "119.00", True),
            (("king", "300"), "79.00", True),
            (("king", "600"), "139.00", False),
            (("full", "400"), "84.50", True),
        ],
    ),
]

# 60 customers; two share a first name (Maya), two share a full name in different zips (Priya
# Raman), two share a last name (Kim).
NAMES = [
    ("Maya", "Okafor"),
    ("Hiroshi", "Tanaka"),
    ("Priya", "Raman"),
    ("Lucas", "Oliveira"),
    ("Amara", "Nwosu"),
    ("Mateo", "Fernandez"),
    ("Ingrid", "Halvorsen"),
    ("Kwame", "Mensah"),
    ("Leila", "Haddad"),
    ("Dmitri", "Volkov"),
    ("Aiyana", "Begay"),
    ("Wei", "Chen"),
    ("Linh", "Nguyen"),
    ("Fatima", "Al-Sayed"),
    ("Sean", "O'Brien"),
    ("Isabella", "Moretti"),
    ("Tomasz", "Kowalski"),
    ("Yuki", "Sato"),
    ("Rahul", "Mehta"),
    ("Aaliyah", "Johnson"),
    ("Diego", "Ramirez"),
    ("Freya", "Lindqvist"),
    ("Omar", "Farouk"),
    ("Grace", "Kim"),
    ("Daniel", "Kim"),
    ("Maya", "Goldberg"),
    ("Jamal", "Washington"),
    ("Elena", "Petrova"),
    ("Chiara", "Bianchi"),
    ("Arjun", "Patel"),
    ("Mei", "Zhang"),
    ("Olumide", "Adeyemi"),
    ("Sakura", "Ito"),
    ("Javier", "Castillo"),
    ("Nadia", "Rahman"),
    ("Benjamin", "Cohen"),
    ("Ewa", "Nowak"),
    ("Tariq", "Hussain"),
    ("Camila", "Souza"),
    ("Erik", "Johansson"),
    ("Zainab", "Bello"),
    ("Kofi", "Asante"),
    ("Hannah", "Schmidt"),
    ("Rafael", "Mendoza"),
    ("Anika", "Sharma"),
    ("Liam", "Doyle"),
    ("Jiwoo", "Park"),
    ("Marisol", "Vega"),
    ("Tevita", "Fifita"),
    ("Astrid", "Nilsen"),
    ("Kenji", "Watanabe"),
    ("Adaeze", "Okonkwo"),
    ("Malik", "Harris"),
    ("Rosa", "Delgado"),
    ("Pavel", "Novak"),
    ("Keanu", "Kahale"),
    ("Thandiwe", "Dlamini"),
    ("Samir", "Qureshi"),
    ("Lucia", "Esposito"),
    ("Priya", "Raman"),
]
VIP_INDEXES = (1, 8, 29, 43)  # Hiroshi Tanaka, Leila Haddad, Arjun Patel, Rafael Mendoza

PLACES = [
    ("Portland", "OR", "97214"),
    ("Seattle", "WA", "98103"),
    ("Austin", "TX", "78704"),
    ("Denver", "CO", "80211"),
    ("Chicago", "IL", "60614"),
    ("Brooklyn", "NY", "11215"),
    ("Boston", "MA", "02130"),
    ("Atlanta", "GA", "30307"),
    ("Phoenix", "AZ", "85016"),
    ("Minneapolis", "MN", "55408"),
    ("Columbus", "OH", "43215"),
    ("Raleigh", "NC", "27605"),
    ("San Diego", "CA", "92104"),
    ("Oakland", "CA", "94610"),
    ("Sacramento", "CA", "95816"),
    ("Salt Lake City", "UT", "84105"),
    ("Nashville", "TN", "37206"),
    ("Madison", "WI", "53703"),
    ("Pittsburgh", "PA", "15217"),
    ("Philadelphia", "PA", "19147"),
    ("Tucson", "AZ", "85719"),
    ("Albuquerque", "NM", "87106"),
    ("Boise", "ID", "83702"),
    ("Omaha", "NE", "68131"),
    ("Kansas City", "MO", "64111"),
    ("St. Paul", "MN", "55105"),
    ("Richmond", "VA", "23220"),
    ("Baltimore", "MD", "21218"),
    ("Houston", "TX", "77006"),
    ("Miami", "FL", "33133"),
    ("Tampa", "FL", "33606"),
    ("Charlotte", "NC", "28203"),
    ("Louisville", "KY", "40204"),
    ("Cleveland", "OH", "44113"),
    ("Detroit", "MI", "48207"),
    ("Ann Arbor", "MI", "48104"),
    ("Honolulu", "HI", "96816"),
    ("Anchorage", "AK", "99501"),
    ("Burlington", "VT", "05401"),
    ("Providence", "RI", "02906"),
    ("New Haven", "CT", "06511"),
    ("Spokane", "WA", "99203"),
    ("Eugene", "OR", "97403"),
    ("Fort Collins", "CO", "80524"),
    ("Santa Fe", "NM", "87501"),
    ("Savannah", "GA", "31401"),
    ("New Orleans", "LA", "70115"),
    ("Milwaukee", "WI", "53202"),
]
STREETS = [
    "Maple Avenue",
    "Cedar Street",
    "Oak Lane",
    "Lakeview Drive",
    "Willow Court",
    "Pine Street",
    "Hillcrest Road",
    "Elm Street",
    "Sunset Boulevard",
    "Riverside Drive",
    "Park Avenue",
    "Highland Avenue",
    "Chestnut Street",
    "Juniper Way",
    "Magnolia Drive",
    "Spruce Street",
    "Orchard Road",
    "Franklin Street",
    "Garfield Avenue",
    "Harbor View Lane",
    "Aspen Circle",
    "Birch Road",
    "Meadowbrook Lane",
    "Washington Street",
    "Lincoln Avenue",
    "Grant Street",
]
UNITS = ["Apt 2B", "Apt 4", "Unit 12", "Suite 300", "Apt 7C", "#5", "Apt 310", "Unit B"]
BRANDS = ["visa", "visa", "mastercard", "mastercard", "amex", "discover"]
DOMAINS = ["example.com", "example.com", "example.com", "example.org", "example.net"]

# how many orders of each status (180 in all)
STATUS_COUNTS = {
    "pending": 63,
    "processed": 27,
    "delivered": 63,
    "cancelled": 14,
    "pending (item modified)": 4,
    "return requested": 4,
    "exchange requested": 5,
}


def money(value: Decimal) -> float:
    return float(value.quantize(CENT))


class Builder:
    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - made-up demo data, seeded to repeat
        self.used: set[str] = set()

    def digits(self, prefix: str, length: int) -> str:
        """A fresh id: ``prefix`` and random digits, ``length`` characters after any '#W'."""
        while True:
            value = prefix + "".join(
                self.rng.choice("0123456789") for _ in range(length - len(prefix))
            )
            if value not in self.used:
                self.used.add(value)
                return value

    # --- products ---------------------------------------------------------------------------

    def products(self) -> dict[str, Any]:
        products: dict[str, Any] = {}
        for name, option_names, variants in CATALOGUE:
            product_id = self.digits("3", 10)
            records = {}
            for values, price, available in variants:
                item_id = self.digits("4", 10)
                records[item_id] = {
                    "item_id": item_id,
                    "options": dict(zip(option_names, values, strict=True)),
                    "available": available,
                    "price": Decimal(price),
                }
            products[product_id] = {"name": name, "product_id": product_id, "variants": records}
        return products

    # --- customers --------------------------------------------------------------------------

    def address(self, place: tuple[str, str, str] | None = None) -> dict[str, str]:
        city, state, zip_code = place or self.rng.choice(PLACES)
        return {
            "address1": f"{self.rng.randint(10, 9899)} {self.rng.choice(STREETS)}",
            "address2": self.rng.choice(UNITS) if self.rng.random() < 0.35 else "",
            "city": city,
            "country": "USA",
            "state": state,
            "zip": zip_code,
        }

    def email(self, first: str, last: str, taken: set[str]) -> str:
        f, la = first.lower(), last.lower().replace("'", "").replace("-", "")
        style = self.rng.random()
        if style < 0.55:
            local = f"{f}.{la}"
        elif style < 0.7:
            local = f"{f[0]}{la}"
        elif style < 0.85:
            local = f"{f}.{la}{self.rng.randint(10, 99)}"
        else:
            local = f"{f}_{la}"
        address = f"{local}@{self.rng.choice(DOMAINS)}"
        while address in taken:
            address = f"{f}.{la}{self.rng.randint(100, 999)}@{self.rng.choice(DOMAINS)}"
        taken.add(address)
        return address

    def payment_methods(self) -> dict[str, Any]:
        methods: dict[str, Any] = {}
        count = self.rng.choices([1, 2, 3], weights=[3, 5, 2])[0]
        kinds = self.rng.sample(["credit_card", "credit_card", "paypal", "gift_card"], count)
        if "credit_card" not in kinds and "paypal" not in kinds:
            kinds[0] = "credit_card"
        for kind in kinds:
            method_id = self.digits(f"{kind}_", len(kind) + 8)
            if kind == "credit_card":
                methods[method_id] = {
                    "source": kind,
                    "id": method_id,
                    "brand": self.rng.choice(BRANDS),
                    "last_four": f"{self.rng.randint(0, 9999):04d}",
                }
            elif kind == "paypal":
                methods[method_id] = {"source": kind, "id": method_id}
            else:
                balance = Decimal(self.rng.randint(0, 30000)) / 100
                methods[method_id] = {"source": kind, "id": method_id, "balance": balance}
        return methods

    def customers(self) -> list[dict[str, Any]]:
        customers = []
        emails: set[str] = set()
        places = list(PLACES)
        self.rng.shuffle(places)
        for index, (first, last) in enumerate(NAMES):
            slug = f"{first}_{last}".lower().replace("'", "").replace("-", "")
            user_id = self.digits(f"{slug}_", len(slug) + 5)
            customers.append(
                {
                    "user_id": user_id,
                    "name": {"first_name": first, "last_name": last},
                    "address": self.address(places[index % len(places)]),
                    "email": self.email(first, last, emails),
                    "payment_methods": self.payment_methods(),
                    "orders": [],
                }
            )
        return customers

    # --- orders -----------------------------------------------------------------------------

    def pick_items(
        self, variants: list[tuple[dict[str, Any], dict[str, Any]]], vip: bool
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        count = self.rng.choices([1, 2, 3, 4], weights=[40, 32, 18, 10])[0]
        if vip:
            count = self.rng.choice([2, 3, 4])
            pricey = [pv for pv in variants if pv[1]["price"] >= 100]
            return [
                self.rng.choice(pricey if self.rng.random() < 0.7 else variants)
                for _ in range(count)
            ]
        return [self.rng.choice(variants) for _ in range(count)]

    def order(
        self,
        customer: dict[str, Any],
        status: str,
        picked: list[tuple[dict[str, Any], dict[str, Any]]],
    ) -> dict[str, Any]:
        order_id = self.digits("#W5", 9)
        items = [
            {
                "name": product["name"],
                "product_id": product["product_id"],
                "item_id": variant["item_id"],
                "price": variant["price"],
                "options": dict(variant["options"]),
            }
            for product, variant in picked
        ]
        total = sum((item["price"] for item in items), Decimal(0))
        methods = customer["payment_methods"]
        usable = [
            m for m in methods.values() if m["source"] != "gift_card" or m["balance"] >= total
        ]
        method = self.rng.choice(usable or list(methods.values()))
        if method["source"] == "gift_card" and method["balance"] < total:  # only gift cards
            method["balance"] = total + Decimal(self.rng.randint(500, 9000)) / 100
        address = dict(customer["address"])
        if self.rng.random() < 0.1:
            address = self.address()
        record: dict[str, Any] = {
            "order_id": order_id,
            "user_id": customer["user_id"],
            "address": address,
            "items": items,
            "status": status,
            "fulfillments": [],
            "payment_history": [
                {"transaction_type": "payment", "amount": total, "payment_method_id": method["id"]}
            ],
        }
        if status in ("processed", "delivered", "return requested", "exchange requested"):
            record["fulfillments"] = [
                {
                    "tracking_id": [self.digits("", 12)],
                    "item_ids": [item["item_id"] for item in items],
                }
            ]
        if status == "cancelled":
            record["cancel_reason"] = self.rng.choice(["no longer needed", "ordered by mistake"])
            record["payment_history"].append(
                {"transaction_type": "refund", "amount": total, "payment_method_id": method["id"]}
            )
        return record

    def other_variant(
        self, products: dict[str, Any], item: dict[str, Any], same_price: bool = False
    ) -> dict[str, Any] | None:
        choices = [
            v
            for v in products[item["product_id"]]["variants"].values()
            if v["available"]
            and v["item_id"] != item["item_id"]
            and (v["price"] != item["price"] or same_price)
        ]
        return self.rng.choice(choices) if choices else None

    def apply_request(
        self, record: dict[str, Any], customer: dict[str, Any], products: dict[str, Any]
    ) -> bool:
        """Give an item-modified, return or exchange order its changes; False if it cannot."""
        status = record["status"]
        paid_with = record["payment_history"][0]["payment_method_id"]
        gift_cards = [
            m["id"] for m in customer["payment_methods"].values() if m["source"] == "gift_card"
        ]
        lines = list(range(len(record["items"])))
        self.rng.shuffle(lines)
        lines = sorted(lines[: self.rng.randint(1, max(1, len(lines) - 1))])
        if status == "return requested":
            record["return_items"] = sorted(record["items"][i]["item_id"] for i in lines)
            record["return_payment_method_id"] = (
                gift_cards[0] if gift_cards and self.rng.random() < 0.3 else paid_with
            )
            return True
        new = [self.other_variant(products, record["items"][i]) for i in lines]
        if any(v is None for v in new):
            return False
        difference = sum(
            (
                v["price"] - record["items"][i]["price"]
                for i, v in zip(lines, new, strict=True)
                if v is not None
            ),
            Decimal(0),
        )
        if status == "exchange requested":
            record["exchange_items"] = sorted(record["items"][i]["item_id"] for i in lines)
            record["exchange_new_items"] = sorted(v["item_id"] for v in new if v is not None)
            record["exchange_payment_method_id"] = paid_with
            record["exchange_price_difference"] = difference
            return True
        # pending (item modified): the lines now hold the new variants
        record["payment_history"].append(
            {
                "transaction_type": "payment" if difference > 0 else "refund",
                "amount": abs(difference),
                "payment_method_id": paid_with,
            }
        )
        for i, v in zip(lines, new, strict=True):
            assert v is not None
            record["items"][i].update(
                item_id=v["item_id"], price=v["price"], options=dict(v["options"])
            )
        return True

    def orders(self, customers: list[dict[str, Any]], products: dict[str, Any]) -> dict[str, Any]:
        variants = [(p, v) for p in products.values() for v in p["variants"].values()]
        counts = [6 if i in VIP_INDEXES else 0 for i in range(len(customers))]
        others = [i for i in range(len(customers)) if i not in VIP_INDEXES]
        for i in others:
            counts[i] = 1
        remaining = sum(STATUS_COUNTS.values()) - sum(counts)
        while remaining:
            i = self.rng.choice(others)
            if counts[i] < 5:
                counts[i] += 1
                remaining -= 1
        statuses = [s for s, n in STATUS_COUNTS.items() for _ in range(n)]
        self.rng.shuffle(statuses)
        # who places each order, in the order they were placed
        sequence = [i for i, n in enumerate(counts) for _ in range(n)]
        self.rng.shuffle(sequence)

        orders: dict[str, Any] = {}
        spend = [Decimal(0)] * len(customers)
        for customer_index, status in zip(sequence, statuses, strict=True):
            customer = customers[customer_index]
            vip = customer_index in VIP_INDEXES
            for _attempt in range(200):
                picked = self.pick_items(variants, vip)
                if (
                    status in ("pending (item modified)", "return requested", "exchange requested")
                    and len(picked) < 2
                ):
                    picked.append(self.rng.choice(variants))
                cost = sum((v["price"] for _, v in picked), Decimal(0))
                if vip or status == "cancelled" or spend[customer_index] + cost < 1300:
                    break
            else:
                picked = [min(variants, key=lambda pv: pv[1]["price"])]
            record = self.order(customer, status, picked)
            if status in ("pending (item modified)", "return requested", "exchange requested"):
                applied = self.apply_request(record, customer, products)
                assert applied, "every product has another available variant"
            if status != "cancelled":
                spend[customer_index] += sum(
                    p["amount"]
                    for p in record["payment_history"]
                    if p["transaction_type"] == "payment"
                )
            orders[record["order_id"]] = record
            customer["orders"].append(record["order_id"])
        return orders


def lifetime_spend(customer: dict[str, Any], orders: dict[str, Any]) -> Decimal:
    """What the customer paid for orders that are not cancelled (refunds not subtracted)."""
    return sum(
        (
            p["amount"]
            for order_id in customer["orders"]
            if orders[order_id]["status"] != "cancelled"
            for p in orders[order_id]["payment_history"]
            if p["transaction_type"] == "payment"
        ),
        Decimal(0),
    )


def to_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def build(seed: int = SEED) -> dict[str, Any]:
    builder = Builder(seed)
    products = builder.products()
    customers = builder.customers()
    orders = builder.orders(customers, products)
    for index, customer in enumerate(customers):
        spent = lifetime_spend(customer, orders)
        if index in VIP_INDEXES:
            assert spent >= VIP_THRESHOLD, (customer["user_id"], spent)
        else:
            assert spent < VIP_THRESHOLD, (customer["user_id"], spent)
    document: dict[str, Any] = to_json(
        {
            "products": products,
            "users": {c["user_id"]: c for c in customers},
            "orders": orders,
        }
    )
    return document


def summary(document: dict[str, Any]) -> str:
    orders = document["orders"]
    statuses = Counter(o["status"] for o in orders.values())
    variants = sum(len(p["variants"]) for p in document["products"].values())
    unavailable = sum(
        not v["available"] for p in document["products"].values() for v in p["variants"].values()
    )
    totals = [sum(i["price"] for i in o["items"]) for o in orders.values()]
    lines = [
        f"wrote {OUT}",
        f"products: {len(document['products'])} ({variants} variants, {unavailable} unavailable)",
        f"customers: {len(document['users'])}",
        f"orders: {len(orders)} ({sum(t > 250 for t in totals)} with a total above $250)",
    ]
    lines += [f"  {status}: {n}" for status, n in statuses.most_common()]
    lines.append(f"VIPs (lifetime spend >= ${VIP_THRESHOLD:,}):")
    for customer in document["users"].values():
        spent = sum(
            p["amount"]
            for order_id in customer["orders"]
            if orders[order_id]["status"] != "cancelled"
            for p in orders[order_id]["payment_history"]
            if p["transaction_type"] == "payment"
        )
        if spent >= VIP_THRESHOLD:
            lines.append(f"  {customer['user_id']}: ${spent:,.2f}")
    return "\n".join(lines)


def main() -> None:
    document = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    print(summary(document))


if __name__ == "__main__":
    main()
