"""CRM contracts: customers, payment methods, orders, products (DESIGN §2).

The shapes follow the retail store of tau2-bench (Sierra Research, MIT), whose order semantics
the CRM implements, with one rename: the reference's ``user_id`` is our ``customer_id``
(``servers/crm/retail_format.py`` converts at the file boundary).

Money is ``Decimal`` with two places: exact in arithmetic, a JSON number on the wire.
"""

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer, StringConstraints

from schemas.common import CustomerId

Money = Annotated[
    Decimal,
    Field(max_digits=12, decimal_places=2),
    PlainSerializer(float, return_type=float, when_used="json"),
]

OrderId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^#W\d{7}$"),
    Field(description="Order id: '#W' and seven digits, e.g. '#W2611340' (mind the '#')."),
]
ProductId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^\d{1,20}$"),
    Field(description="Product (type) id, digits, e.g. '8310926033'. Not an item id."),
]
ItemId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^\d{1,20}$"),
    Field(description="Item (variant) id, digits, e.g. '6469567736'. Not a product id."),
]
PaymentMethodId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^(credit_card|paypal|gift_card)_\d{1,20}$"),
    Field(
        description="A payment method of the customer, e.g. 'credit_card_7815826', "
        "'paypal_5727330', 'gift_card_1725971' (see get_customer)."
    ),
]
AddressLine = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Zip = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=20),
    Field(description="Postal code, e.g. '80279'."),
]

OrderStatus = Literal[
    "processed",
    "pending",
    "pending (item modified)",
    "delivered",
    "cancelled",
    "exchange requested",
    "return requested",
]
CancelReason = Literal["no longer needed", "ordered by mistake"]


class Address(BaseModel):
    address1: Annotated[AddressLine, Field(min_length=1, description="e.g. '123 Main St'.")]
    address2: Annotated[AddressLine, Field(description="e.g. 'Apt 1', or ''.")] = ""
    city: Annotated[AddressLine, Field(min_length=1)]
    country: Annotated[AddressLine, Field(min_length=1, description="e.g. 'USA'.")]
    state: Annotated[AddressLine, Field(min_length=1, description="e.g. 'CA'.")]
    zip: Zip


class PersonName(BaseModel):
    first_name: Name
    last_name: Name


class CreditCard(BaseModel):
    source: Literal["credit_card"] = "credit_card"
    id: PaymentMethodId
    brand: str
    last_four: Annotated[str, StringConstraints(pattern=r"^\d{4}$")]


class PayPal(BaseModel):
    source: Literal["paypal"] = "paypal"
    id: PaymentMethodId


class GiftCard(BaseModel):
    source: Literal["gift_card"] = "gift_card"
    id: PaymentMethodId
    balance: Money


PaymentMethod = Annotated[CreditCard | PayPal | GiftCard, Field(discriminator="source")]


class Customer(BaseModel):
    """A customer with their payment methods and the ids of their orders."""

    customer_id: CustomerId
    name: PersonName
    address: Address
    email: str
    payment_methods: dict[str, PaymentMethod] = Field(
        description="The customer's payment methods by id."
    )
    orders: list[str] = Field(description="Order ids, oldest first.")


class Variant(BaseModel):
    """One item (variant) of a product: its options, availability and price."""

    item_id: ItemId
    options: dict[str, str]
    available: bool
    price: Money


class Product(BaseModel):
    product_id: ProductId
    name: str
    variants: dict[str, Variant] = Field(description="Variants by item id.")


class Item(Variant):
    """An item with the product it is a variant of."""

    product_id: ProductId
    product_name: str


class ProductType(BaseModel):
    name: str
    product_id: ProductId


class ProductTypes(BaseModel):
    products: list[ProductType] = Field(description="Every product type, by name.")


class OrderItem(BaseModel):
    name: str
    product_id: ProductId
    item_id: ItemId
    price: Money = Field(description="Price paid for this item.")
    options: dict[str, str]


class Fulfillment(BaseModel):
    tracking_id: list[str]
    item_ids: list[str]


class Payment(BaseModel):
    transaction_type: Literal["payment", "refund"]
    amount: Money
    payment_method_id: PaymentMethodId


class Order(BaseModel):
    """An order: items, status, shipments, payments, and any cancel/return/exchange request."""

    order_id: OrderId
    customer_id: CustomerId
    address: Address
    items: list[OrderItem]
    status: OrderStatus
    fulfillments: list[Fulfillment]
    payment_history: list[Payment]
    cancel_reason: CancelReason | None = None
    exchange_items: list[str] | None = None
    exchange_new_items: list[str] | None = None
    exchange_payment_method_id: str | None = None
    exchange_price_difference: Money | None = Field(
        None, description="New items' price minus old: positive is owed by the customer."
    )
    return_items: list[str] | None = None
    return_payment_method_id: str | None = None


class OrderSummary(BaseModel):
    order_id: OrderId
    status: OrderStatus
    item_count: int
    total: Money = Field(description="Sum of the items' prices.")


class CustomerOrders(BaseModel):
    customer_id: CustomerId
    orders: list[OrderSummary]


class CustomerMatch(BaseModel):
    customer_id: CustomerId


class Store(BaseModel):
    """A whole store, as loaded from or exported to a file in the reference's format."""

    customers: list[Customer]
    orders: list[Order]
    products: list[Product]
