"""The order rules against the reference's code paths, and properties over the real store.

Every ``raise`` of tau2-bench's retail tools has a case here that our rule refuses with a typed
error and leaves the records as they were. Hypothesis then drives random actions over the
shared retail store (1,000 real orders) and our demo store: money is conserved and no order
reaches a status the reference cannot reach.
"""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.crm import Address, Customer, GiftCard, Order, Product, Store
from servers.crm import orders as rules
from servers.crm.retail_format import read_store
from servers.crm.server import DEMO_STORE
from servers.runtime.errors import Conflict, InvalidArgument, NotFound, SupportMeshError
from tests.conftest import require_shared_data, shared_data

DEMO = read_store(DEMO_STORE / "db.json")
SHARED = shared_data()
RETAIL = read_store(SHARED / "tau2" / "retail" / "db.json") if SHARED else None
ADDRESS = Address(address1="1 New St", city="Boston", state="MA", country="USA", zip="02101")


def records(store: Store, order_id: str) -> tuple[Order, Customer, dict[str, Product]]:
    """Copies of an order, its customer and the catalogue, free for a test to change."""
    order = next(o for o in store.orders if o.order_id == order_id).model_copy(deep=True)
    customer = next(c for c in store.customers if c.customer_id == order.customer_id)
    products = {p.product_id: p.model_copy(deep=True) for p in store.products}
    return order, customer.model_copy(deep=True), products


def refused(
    error: type[SupportMeshError], field: str, action: Callable[[], Any], *untouched: Any
) -> str:
    """Run ``action``; it must raise ``error`` naming ``field`` and change none of ``untouched``."""
    before = [r.model_dump() for r in untouched]
    with pytest.raises(error) as caught:
        action()
    assert caught.value.field == field, str(caught.value)
    assert [r.model_dump() for r in untouched] == before
    return str(caught.value)


def gift(customer: Customer, method_id: str) -> Decimal:
    method = customer.payment_methods[method_id]
    assert isinstance(method, GiftCard)
    return method.balance


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_refunds_every_payment_and_gift_cards_at_once() -> None:
    order, customer, _ = records(DEMO, "#W9000003")  # pending, paid 19.50 by gift card
    cancelled, after = rules.cancel_pending_order(order, customer, "no longer needed")
    assert cancelled.status == "cancelled"
    assert cancelled.cancel_reason == "no longer needed"
    assert [(p.transaction_type, p.amount) for p in cancelled.payment_history] == [
        ("payment", Decimal("19.5")),
        ("refund", Decimal("19.5")),
    ]
    assert gift(after, "gift_card_9000001") == Decimal("59.50")
    assert gift(customer, "gift_card_9000001") == Decimal("40")  # the input is not changed


def test_cancel_after_a_payment_change_refunds_each_method_once() -> None:
    order, customer, _ = records(DEMO, "#W9000003")  # 19.50 by gift card (balance 40)
    changed, customer = rules.modify_pending_order_payment(order, customer, "credit_card_9000002")
    assert gift(customer, "gift_card_9000001") == Decimal("59.50")  # refunded at the change
    cancelled, customer = rules.cancel_pending_order(changed, customer, "no longer needed")
    assert [(p.transaction_type, p.payment_method_id) for p in cancelled.payment_history[3:]] == [
        ("refund", "credit_card_9000002")
    ]
    assert gift(customer, "gift_card_9000001") == Decimal("59.50")  # not credited twice


def test_cancel_refuses_what_the_reference_refuses() -> None:
    for order_id in ("#W9000002", "#W9000005", "#W9000006"):  # delivered, processed, cancelled
        order, customer, _ = records(DEMO, order_id)
        message = refused(
            Conflict,
            "order_id",
            lambda o=order, c=customer: rules.cancel_pending_order(o, c, "no longer needed"),  # type: ignore[misc]
            order,
            customer,
        )
        assert "not pending" in message
    order, customer, products = records(DEMO, "#W9000001")
    modified, customer = rules.modify_pending_order_items(
        order, customer, products, ["2000000011"], ["2000000012"], "credit_card_9000002"
    )
    refused(  # the reference cancels only status == 'pending', not 'pending (item modified)'
        Conflict,
        "order_id",
        lambda: rules.cancel_pending_order(modified, customer, "ordered by mistake"),
        modified,
    )


# --- modify items ----------------------------------------------------------------------------


def test_modify_items_charges_the_difference_once_and_marks_the_order() -> None:
    order, customer, products = records(DEMO, "#W9000001")  # mug 19.50 + lamp 74.10, by card
    modified, after = rules.modify_pending_order_items(
        order,
        customer,
        products,
        ["2000000011", "2000000022"],
        ["2000000013", "2000000021"],
        "credit_card_9000002",
    )
    assert modified.status == "pending (item modified)"
    assert modified.payment_history[-1].model_dump() == {
        "transaction_type": "payment",
        "amount": Decimal("20.64"),  # (24.25 - 19.50) + (89.99 - 74.10)
        "payment_method_id": "credit_card_9000002",
    }
    # Each line takes its own variant's price and options.
    assert [(i.item_id, i.price) for i in modified.items] == [
        ("2000000013", Decimal("24.25")),
        ("2000000021", Decimal("89.99")),
    ]
    assert modified.items[1].options == {"finish": "brass", "bulb": "LED"}
    assert after == customer


def test_modify_items_with_a_gift_card_moves_its_balance_both_ways() -> None:
    order, customer, products = records(DEMO, "#W9000003")  # blue mug 19.50, gift card 40
    dearer, after = rules.modify_pending_order_items(
        order, customer, products, ["2000000012"], ["2000000013"], "gift_card_9000001"
    )
    assert gift(after, "gift_card_9000001") == Decimal("35.25")
    assert dearer.payment_history[-1].transaction_type == "payment"
    order.items[0].price = Decimal("30.00")  # bought dearer than the variant now costs
    cheaper, after = rules.modify_pending_order_items(
        order, customer, products, ["2000000012"], ["2000000011"], "gift_card_9000001"
    )
    assert cheaper.payment_history[-1].model_dump()["transaction_type"] == "refund"
    assert cheaper.payment_history[-1].amount == Decimal("10.50")
    assert gift(after, "gift_card_9000001") == Decimal("50.50")


def test_modify_items_refuses_what_the_reference_refuses() -> None:
    order, customer, products = records(DEMO, "#W9000001")
    card = "credit_card_9000002"

    def modify(
        item_ids: list[str], new_item_ids: list[str], method: str = card, target: Order = order
    ) -> Callable[[], Any]:
        return lambda: rules.modify_pending_order_items(
            target, customer, products, item_ids, new_item_ids, method
        )

    delivered, _, _ = records(DEMO, "#W9000002")
    refused(Conflict, "order_id", modify(["2000000011"], ["2000000012"], target=delivered))
    refused(InvalidArgument, "item_ids", modify(["2000000031"], ["2000000032"]), order)
    refused(  # one mug in the order, two asked
        InvalidArgument, "item_ids", modify(["2000000011"] * 2, ["2000000012"] * 2), order
    )
    refused(InvalidArgument, "new_item_ids", modify(["2000000011"], []), order)
    refused(InvalidArgument, "new_item_ids", modify(["2000000011"], ["2000000011"]), order)
    refused(InvalidArgument, "new_item_ids", modify(["2000000011"], ["2000000021"]), order)
    refused(Conflict, "new_item_ids", modify(["2000000011"], ["2000000014"]), order)
    refused(
        NotFound, "payment_method_id", modify(["2000000011"], ["2000000012"], "paypal_1"), order
    )
    refused(  # the lamp swap costs 15.89 more; Ada's gift card holds 40: fine. A brass lamp
        # for the mug is another product: refused above. Make the card short instead.
        Conflict,
        "payment_method_id",
        lambda: rules.modify_pending_order_items(
            order,
            customer.model_copy(
                update={
                    "payment_methods": {
                        **customer.payment_methods,
                        "gift_card_9000001": GiftCard(id="gift_card_9000001", balance=Decimal(1)),
                    }
                }
            ),
            products,
            ["2000000022"],
            ["2000000021"],
            "gift_card_9000001",
        ),
        order,
    )


def test_modify_items_picks_distinct_lines_for_repeated_ids() -> None:
    order, customer, products = records(DEMO, "#W9000002")
    order.status = "pending"
    modified, _ = rules.modify_pending_order_items(
        order,
        customer,
        products,
        ["2000000011", "2000000011"],
        ["2000000012", "2000000013"],
        "gift_card_9000001",
    )
    assert [i.item_id for i in modified.items] == ["2000000012", "2000000013", "2000000031"]


# --- modify address and payment --------------------------------------------------------------


def test_modify_address_for_any_pending_status() -> None:
    order, customer, products = records(DEMO, "#W9000001")
    assert rules.modify_pending_order_address(order, ADDRESS).address == ADDRESS
    modified, _ = rules.modify_pending_order_items(
        order, customer, products, ["2000000011"], ["2000000012"], "credit_card_9000002"
    )
    assert rules.modify_pending_order_address(modified, ADDRESS).address == ADDRESS
    delivered, _, _ = records(DEMO, "#W9000004")
    refused(Conflict, "order_id", lambda: rules.modify_pending_order_address(delivered, ADDRESS))


def test_modify_payment_charges_the_new_method_and_refunds_the_old() -> None:
    order, customer, _ = records(DEMO, "#W9000003")  # 19.50 by gift card
    changed, after = rules.modify_pending_order_payment(order, customer, "credit_card_9000002")
    assert [(p.transaction_type, p.payment_method_id) for p in changed.payment_history] == [
        ("payment", "gift_card_9000001"),
        ("payment", "credit_card_9000002"),
        ("refund", "gift_card_9000001"),
    ]
    assert gift(after, "gift_card_9000001") == Decimal("59.50")


def test_modify_payment_refuses_what_the_reference_refuses() -> None:
    order, customer, _ = records(DEMO, "#W9000001")  # 93.60 by card; gift card holds 40
    refused(
        Conflict,
        "payment_method_id",
        lambda: rules.modify_pending_order_payment(order, customer, "gift_card_9000001"),
        order,
        customer,
    )
    refused(
        InvalidArgument,
        "payment_method_id",
        lambda: rules.modify_pending_order_payment(order, customer, "credit_card_9000002"),
    )
    refused(
        NotFound,
        "payment_method_id",
        lambda: rules.modify_pending_order_payment(order, customer, "paypal_9000003"),
    )
    once, customer2 = rules.modify_pending_order_payment(
        *records(DEMO, "#W9000003")[:2], "credit_card_9000002"
    )
    refused(  # three transactions now: not exactly one payment
        Conflict,
        "order_id",
        lambda: rules.modify_pending_order_payment(once, customer2, "gift_card_9000001"),
    )
    delivered, ben, _ = records(DEMO, "#W9000004")
    refused(
        Conflict,
        "order_id",
        lambda: rules.modify_pending_order_payment(delivered, ben, "gift_card_9000004"),
    )


# --- return and exchange ---------------------------------------------------------------------


def test_return_goes_to_the_original_method_or_a_gift_card() -> None:
    order, customer, _ = records(DEMO, "#W9000004")  # Ben, paid by PayPal
    returned = rules.return_delivered_order_items(
        order, customer, ["2000000021"], "gift_card_9000004"
    )
    assert returned.status == "return requested"
    assert returned.return_items == ["2000000021"]
    assert returned.payment_history == order.payment_history  # refunded later, on receipt
    ada_order, ada, _ = records(DEMO, "#W9000002")  # paid by gift card
    refused(
        InvalidArgument,
        "payment_method_id",
        lambda: rules.return_delivered_order_items(
            ada_order, ada, ["2000000011"], "credit_card_9000002"
        ),
    )
    refused(
        InvalidArgument,
        "item_ids",
        lambda: rules.return_delivered_order_items(
            ada_order, ada, ["2000000011"] * 3, "gift_card_9000001"
        ),
    )
    pending, _, _ = records(DEMO, "#W9000001")
    refused(
        Conflict,
        "order_id",
        lambda: rules.return_delivered_order_items(
            pending, ada, ["2000000011"], "gift_card_9000001"
        ),
    )
    refused(  # done once, the order is no longer delivered
        Conflict,
        "order_id",
        lambda: rules.return_delivered_order_items(
            returned, customer, ["2000000021"], "gift_card_9000004"
        ),
    )


def test_exchange_records_the_difference_and_checks_a_gift_card() -> None:
    order, customer, products = records(DEMO, "#W9000004")  # brass lamp 89.99
    exchanged = rules.exchange_delivered_order_items(
        order, customer, products, ["2000000021"], ["2000000023"], "paypal_9000003"
    )
    assert exchanged.status == "exchange requested"
    assert exchanged.exchange_price_difference == Decimal("-28.64")
    assert (exchanged.exchange_items, exchanged.exchange_new_items) == (
        ["2000000021"],
        ["2000000023"],
    )
    ada_order, ada, _ = records(DEMO, "#W9000002")  # jacket 129 -> 139.75 navy L
    refused(
        Conflict,
        "payment_method_id",
        lambda: rules.exchange_delivered_order_items(
            ada_order,
            ada.model_copy(
                update={
                    "payment_methods": {
                        "gift_card_9000001": GiftCard(id="gift_card_9000001", balance=Decimal(10))
                    }
                }
            ),
            products,
            ["2000000031"],
            ["2000000033"],
            "gift_card_9000001",
        ),
    )
    refused(
        Conflict,
        "new_item_ids",
        lambda: rules.exchange_delivered_order_items(
            ada_order, ada, products, ["2000000011"], ["2000000014"], "gift_card_9000001"
        ),
    )
    refused(
        InvalidArgument,
        "new_item_ids",
        lambda: rules.exchange_delivered_order_items(
            ada_order, ada, products, ["2000000011"], ["2000000033"], "gift_card_9000001"
        ),
    )


# --- properties over the real store -----------------------------------------------------------

# Every status change the reference's tools can make; nothing else may ever happen.
REFERENCE_MOVES = {
    ("pending", "cancelled"),
    ("pending", "pending"),  # address or payment
    ("pending", "pending (item modified)"),
    ("pending (item modified)", "pending (item modified)"),  # address or payment
    ("delivered", "return requested"),
    ("delivered", "exchange requested"),
}
# The properties run on the shared store where this machine has it (CI does), else on the demo.
STORES = {"demo": DEMO} | ({"retail": RETAIL} if RETAIL else {})


def ledger(order: Order, customer: Customer) -> Decimal:
    """Gift-card money: on the cards, plus paid into this order from them, net of refunds."""
    on_cards = sum(
        (m.balance for m in customer.payment_methods.values() if isinstance(m, GiftCard)),
        Decimal(0),
    )
    from_cards = sum(
        (
            p.amount if p.transaction_type == "payment" else -p.amount
            for p in order.payment_history
            if isinstance(customer.payment_methods.get(p.payment_method_id), GiftCard)
        ),
        Decimal(0),
    )
    return on_cards + from_cards


def net_paid(order: Order) -> Decimal:
    return sum(
        (p.amount if p.transaction_type == "payment" else -p.amount for p in order.payment_history),
        Decimal(0),
    )


def variant_price(products: dict[str, Product], item_id: str) -> Decimal:
    return next(p.variants[item_id].price for p in products.values() if item_id in p.variants)


def drift(order: Order, item_ids: list[str], products: dict[str, Product]) -> Decimal:
    """What the order's lines cost today minus what was paid for them (prices move)."""
    lines = rules._lines(order, item_ids)
    return sum(
        (variant_price(products, order.items[n].item_id) - order.items[n].price for n in lines),
        Decimal(0),
    )


@st.composite
def action(draw: st.DrawFn, order: Order, customer: Customer, products: dict[str, Product]) -> Any:
    """One action with arguments drawn from what a model could plausibly send."""
    lines = draw(st.lists(st.sampled_from(order.items), min_size=1, max_size=len(order.items)))
    item_ids = [line.item_id for line in lines]
    new_ids = []
    for line in lines:  # mostly a variant a careful model would pick, sometimes any
        variants = products[line.product_id].variants
        good = sorted(i for i, v in variants.items() if v.available and i != line.item_id)
        pick_good = good and draw(st.integers(0, 9)) > 0
        new_ids.append(draw(st.sampled_from(good if pick_good else sorted(variants))))
    method = draw(st.sampled_from(sorted(customer.payment_methods)))
    kind = draw(st.sampled_from(["cancel", "address", "items", "payment", "return", "exchange"]))
    calls: dict[str, Callable[[Order, Customer], tuple[Order, Customer]]] = {
        "cancel": lambda o, c: rules.cancel_pending_order(o, c, "no longer needed"),
        "address": lambda o, c: (rules.modify_pending_order_address(o, ADDRESS), c),
        "items": lambda o, c: rules.modify_pending_order_items(
            o, c, products, item_ids, new_ids, method
        ),
        "payment": lambda o, c: rules.modify_pending_order_payment(o, c, method),
        "return": lambda o, c: (rules.return_delivered_order_items(o, c, item_ids, method), c),
        "exchange": lambda o, c: (
            rules.exchange_delivered_order_items(o, c, products, item_ids, new_ids, method),
            c,
        ),
    }
    return kind, calls[kind]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), store=st.sampled_from(sorted(STORES)))
def test_money_is_conserved_and_states_stay_reachable(data: st.DataObject, store: str) -> None:
    records_of = STORES[store]
    actionable = [o for o in records_of.orders if o.status in ("pending", "delivered")]
    order = data.draw(
        st.sampled_from(actionable if data.draw(st.booleans()) else records_of.orders)
    )
    order, customer, products = records(records_of, order.order_id)
    for _ in range(data.draw(st.integers(1, 4))):
        kind, call = data.draw(action(order, customer, products))
        before_order, before_customer = order.model_dump(), customer.model_dump()
        try:
            new_order, new_customer = call(order, customer)
        except SupportMeshError as exc:
            event(f"refused {kind}: {exc.code.value}")
            assert (order.model_dump(), customer.model_dump()) == (before_order, before_customer)
            continue
        event(f"did {kind}")
        assert (order.status, new_order.status) in REFERENCE_MOVES, kind
        assert ledger(new_order, new_customer) == ledger(order, customer)
        items = sum((i.price for i in new_order.items), Decimal(0))
        assert net_paid(new_order) == (0 if new_order.status == "cancelled" else items)
        if kind == "exchange":  # the difference is what the new variants cost over the old
            assert new_order.exchange_price_difference == sum(
                (variant_price(products, i) for i in new_order.exchange_new_items or []),
                Decimal(0),
            ) - sum(
                (variant_price(products, i) for i in new_order.exchange_items or []),
                Decimal(0),
            ) + drift(order, new_order.exchange_items or [], products)
        for method in new_customer.payment_methods.values():
            if isinstance(method, GiftCard):
                assert method.balance >= 0
                assert method.balance == method.balance.quantize(Decimal("0.01"))
        order, customer = new_order, new_customer


def test_the_shared_store_is_where_the_properties_run() -> None:
    require_shared_data()
    assert RETAIL is not None and "retail" in STORES
    assert (len(RETAIL.customers), len(RETAIL.orders), len(RETAIL.products)) == (500, 1000, 50)
