"""The rules of order actions, as pure functions on copies of the records they change.

They follow the retail domain of tau2-bench (``src/tau2/domains/retail/tools.py``): the same
preconditions, status strings and effects on payments and gift-card balances. Each function
takes the order (and the customer whose payment methods it uses), checks every precondition
before changing anything, and returns new records; the store saves them in one transaction.

Where the reference refuses with ``ValueError``, we refuse with a typed error naming the field:
``not_found`` for an id that does not exist, ``conflict`` for a state that forbids the action
(not pending, not delivered, item unavailable, gift card short), ``invalid_argument`` for
arguments that cannot be right whatever the state.

Three places differ from the reference, each where it would corrupt an order or create money:

- modifying several items sets each line's price and options from its own new variant (the
  reference gives every modified line those of the last variant in the list);
- each id in ``item_ids`` picks a distinct line of the order, chosen before any is changed (the
  reference searches again after each change, so swapping two items' ids undoes itself);
- cancelling refunds each payment method what it paid net of refunds (the reference refunds
  every entry, refunds included: after a change of payment method from a gift card, cancelling
  credits that card twice). For an order with one payment, the usual case, both agree.
"""

from collections.abc import Sequence
from decimal import Decimal

from schemas.crm import (
    Address,
    CancelReason,
    Customer,
    GiftCard,
    Order,
    Payment,
    PaymentMethod,
    Product,
    Variant,
)
from servers.runtime.errors import Conflict, InvalidArgument, NotFound

CENT = Decimal("0.01")


def _payment_method(customer: Customer, payment_method_id: str) -> PaymentMethod:
    method = customer.payment_methods.get(payment_method_id)
    if method is None:
        raise NotFound(
            "payment_method_id",
            f"customer {customer.customer_id} has no payment method {payment_method_id}",
        )
    return method


def _require_status(order: Order, wanted: str) -> None:
    if order.status != wanted:
        raise Conflict("order_id", f"order {order.order_id} is {order.status}, not {wanted}")


def _require_some_pending(order: Order) -> None:
    """Address and payment changes accept 'pending' and 'pending (item modified)'."""
    if "pending" not in order.status:
        raise Conflict("order_id", f"order {order.order_id} is {order.status}, not pending")


def _lines(order: Order, item_ids: Sequence[str]) -> list[int]:
    """For each item id, a distinct line of the order holding it (duplicates allowed)."""
    used: set[int] = set()
    lines = []
    for item_id in item_ids:
        line = next(
            (i for i, it in enumerate(order.items) if it.item_id == item_id and i not in used),
            None,
        )
        if line is None:
            held = sum(1 for it in order.items if it.item_id == item_id)
            raise InvalidArgument(
                "item_ids",
                f"order {order.order_id} holds item {item_id} {held} time(s), "
                f"fewer than the {item_ids.count(item_id)} asked",
            )
        used.add(line)
        lines.append(line)
    return lines


def _replacements(
    order: Order,
    lines: list[int],
    new_item_ids: Sequence[str],
    products: dict[str, Product],
    allow_same: bool,
) -> list[Variant]:
    """The new variant for each line: same product, available, and (when modifying) new."""
    if len(new_item_ids) != len(lines):
        raise InvalidArgument(
            "new_item_ids", f"{len(new_item_ids)} new items for {len(lines)} items; give one each"
        )
    variants = []
    for line, new_item_id in zip(lines, new_item_ids, strict=True):
        old = order.items[line]
        if not allow_same and new_item_id == old.item_id:
            raise InvalidArgument(
                "new_item_ids", f"item {new_item_id} is the one it replaces; pick another variant"
            )
        product = products.get(old.product_id)
        variant = product.variants.get(new_item_id) if product else None
        if variant is None:
            raise InvalidArgument(
                "new_item_ids",
                f"item {new_item_id} is not a variant of product {old.product_id} ({old.name})",
            )
        if not variant.available:
            raise Conflict("new_item_ids", f"item {new_item_id} is not available")
        variants.append(variant)
    return variants


def _check_gift_card_covers(method: PaymentMethod, amount: Decimal, what: str) -> None:
    if isinstance(method, GiftCard) and method.balance < amount:
        raise Conflict(
            "payment_method_id",
            f"gift card {method.id} holds {method.balance}, less than the {amount} {what}",
        )


def _add_to_gift_card(customer: Customer, payment_method_id: str, amount: Decimal) -> None:
    method = customer.payment_methods[payment_method_id]
    if isinstance(method, GiftCard):
        method.balance = (method.balance + amount).quantize(CENT)


def cancel_pending_order(
    order: Order, customer: Customer, reason: CancelReason
) -> tuple[Order, Customer]:
    """Cancel: what each payment method paid, net of refunds, is refunded to it; gift-card
    refunds land on the card at once."""
    _require_status(order, "pending")
    net: dict[str, Decimal] = {}
    for payment in order.payment_history:
        _payment_method(customer, payment.payment_method_id)
        signed = payment.amount if payment.transaction_type == "payment" else -payment.amount
        net[payment.payment_method_id] = net.get(payment.payment_method_id, Decimal(0)) + signed
    order, customer = order.model_copy(deep=True), customer.model_copy(deep=True)
    refunds = [
        Payment(transaction_type="refund", amount=amount, payment_method_id=method_id)
        for method_id, amount in net.items()
        if amount > 0
    ]
    for refund in refunds:
        _add_to_gift_card(customer, refund.payment_method_id, refund.amount)
    order.status = "cancelled"
    order.cancel_reason = reason
    order.payment_history.extend(refunds)
    return order, customer


def modify_pending_order_address(order: Order, address: Address) -> Order:
    _require_some_pending(order)
    order = order.model_copy(deep=True)
    order.address = address.model_copy()
    return order


def modify_pending_order_items(
    order: Order,
    customer: Customer,
    products: dict[str, Product],
    item_ids: Sequence[str],
    new_item_ids: Sequence[str],
    payment_method_id: str,
) -> tuple[Order, Customer]:
    """Swap items for other variants of the same products; once per order.

    The price difference is paid (or refunded) through ``payment_method_id``; a gift card pays
    or is credited at once and must cover what it pays.
    """
    _require_status(order, "pending")
    lines = _lines(order, item_ids)
    variants = _replacements(order, lines, new_item_ids, products, allow_same=False)
    method = _payment_method(customer, payment_method_id)
    difference = sum(
        (v.price - order.items[line].price for line, v in zip(lines, variants, strict=True)),
        Decimal(0),
    )
    _check_gift_card_covers(method, difference, "the new items cost more")
    order, customer = order.model_copy(deep=True), customer.model_copy(deep=True)
    order.payment_history.append(
        Payment(
            transaction_type="payment" if difference > 0 else "refund",
            amount=abs(difference),
            payment_method_id=payment_method_id,
        )
    )
    _add_to_gift_card(customer, payment_method_id, -difference)
    for line, variant in zip(lines, variants, strict=True):
        item = order.items[line]
        item.item_id, item.price, item.options = variant.item_id, variant.price, variant.options
    order.status = "pending (item modified)"
    return order, customer


def modify_pending_order_payment(
    order: Order, customer: Customer, payment_method_id: str
) -> tuple[Order, Customer]:
    """Pay the whole order with another method: the new one pays, the old one is refunded."""
    _require_some_pending(order)
    method = _payment_method(customer, payment_method_id)
    history = order.payment_history
    if len(history) != 1 or history[0].transaction_type != "payment":
        raise Conflict(
            "order_id",
            f"order {order.order_id} has {len(history)} transactions; its payment method can "
            "change only while it has exactly one payment",
        )
    old = history[0]
    if old.payment_method_id == payment_method_id:
        raise InvalidArgument(
            "payment_method_id", f"the order is already paid with {payment_method_id}"
        )
    _check_gift_card_covers(method, old.amount, "the order costs")
    _payment_method(customer, old.payment_method_id)
    order, customer = order.model_copy(deep=True), customer.model_copy(deep=True)
    order.payment_history += [
        Payment(transaction_type="payment", amount=old.amount, payment_method_id=payment_method_id),
        Payment(
            transaction_type="refund", amount=old.amount, payment_method_id=old.payment_method_id
        ),
    ]
    _add_to_gift_card(customer, payment_method_id, -old.amount)
    _add_to_gift_card(customer, old.payment_method_id, old.amount)
    return order, customer


def return_delivered_order_items(
    order: Order, customer: Customer, item_ids: Sequence[str], payment_method_id: str
) -> Order:
    """Request a return; the refund goes to the original payment method or a gift card."""
    _require_status(order, "delivered")
    method = _payment_method(customer, payment_method_id)
    if not order.payment_history:
        raise Conflict("order_id", f"order {order.order_id} has no payment to refund")
    original = order.payment_history[0].payment_method_id
    if not isinstance(method, GiftCard) and payment_method_id != original:
        raise InvalidArgument(
            "payment_method_id",
            f"a refund goes to the original payment method ({original}) or a gift card",
        )
    _lines(order, item_ids)
    order = order.model_copy(deep=True)
    order.status = "return requested"
    order.return_items = sorted(item_ids)
    order.return_payment_method_id = payment_method_id
    return order


def exchange_delivered_order_items(
    order: Order,
    customer: Customer,
    products: dict[str, Product],
    item_ids: Sequence[str],
    new_item_ids: Sequence[str],
    payment_method_id: str,
) -> Order:
    """Request an exchange for other variants of the same products; the difference is recorded.

    Nothing is charged yet; a gift card must already cover a positive difference.
    """
    _require_status(order, "delivered")
    lines = _lines(order, item_ids)
    variants = _replacements(order, lines, new_item_ids, products, allow_same=True)
    difference = sum(
        (v.price - order.items[line].price for line, v in zip(lines, variants, strict=True)),
        Decimal(0),
    ).quantize(CENT)
    method = _payment_method(customer, payment_method_id)
    _check_gift_card_covers(method, difference, "the new items cost more")
    order = order.model_copy(deep=True)
    order.status = "exchange requested"
    order.exchange_items = sorted(item_ids)
    order.exchange_new_items = sorted(new_item_ids)
    order.exchange_payment_method_id = payment_method_id
    order.exchange_price_difference = difference
    return order
