"""The CRM MCP server: customers, orders and products, with the order actions of a retail store.

Order actions follow the retail domain of tau2-bench (see ``orders.py``). Tools are thin: they
check arguments (pydantic, from the signature), call ``store`` and let typed errors through.
``build_server(settings)`` makes the server; ``supportmesh serve crm`` runs it.
"""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations
from pydantic import Field

from schemas.common import CustomerId, IdempotencyKey
from schemas.crm import (
    Address,
    AddressLine,
    CancelReason,
    Customer,
    CustomerMatch,
    CustomerOrders,
    Item,
    ItemId,
    Name,
    Order,
    OrderId,
    PaymentMethodId,
    Product,
    ProductId,
    ProductTypes,
    Zip,
)
from servers.crm import store
from servers.crm.store import Crm
from servers.runtime.auth import Caller, current_caller
from servers.runtime.cache import ReadCache, cache_prefix
from servers.runtime.database import values_starting_with
from servers.runtime.errors import InvalidArgument, NotFound
from servers.runtime.events import schema_with_outbox
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings

NAME = "crm"
MIGRATIONS = Path(__file__).parent / "migrations"
DEMO_STORE = Path(__file__).parent / "demo"  # a small store of our own: db.json, policy.md
INSTRUCTIONS = """\
Customers, their orders and the product catalogue of the store, and the actions support may
take on orders. Identify the customer first (find_customer by email, or by name and zip), then
read with get_customer / list_customer_orders / get_order. Pending orders can be cancelled or
modified (address, payment method, items once); delivered orders can have items returned or
exchanged (once). Every action changes money or goods: explain the details to the customer and
get an explicit yes before calling it. The store's policy is the resource crm://policy."""

READ = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
ACT = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False
)

ItemIds = Annotated[
    list[ItemId],
    Field(
        min_length=1,
        max_length=50,
        description="Item ids in the order, each such as '1008292230'; repeat an id to act on "
        "several lines holding it.",
    ),
]
NewItemIds = Annotated[
    list[ItemId],
    Field(
        min_length=1,
        max_length=50,
        description="For each id in item_ids, at the same position, the new item: another "
        "variant of the same product (see get_product).",
    ),
]
Address1 = Annotated[AddressLine, Field(min_length=1, description="e.g. '123 Main St'.")]
Address2 = Annotated[AddressLine, Field(description="e.g. 'Apt 1', or ''.")]
City = Annotated[AddressLine, Field(min_length=1, description="e.g. 'San Francisco'.")]
State = Annotated[AddressLine, Field(min_length=1, description="e.g. 'CA'.")]
Country = Annotated[AddressLine, Field(min_length=1, description="e.g. 'USA'.")]


def _crm(ctx: Context) -> Crm:
    crm: Crm = ctx.lifespan_context  # type: ignore[assignment]
    return crm


def _caller(ctx: Context) -> Caller:
    return current_caller(ctx, _crm(ctx).settings)


# --- reads ------------------------------------------------------------------------------------


async def find_customer(
    ctx: Context,
    email: Annotated[
        str | None, Field(max_length=254, description="e.g. 'noah.brown7922@example.com'.")
    ] = None,
    first_name: Name | None = None,
    last_name: Name | None = None,
    zip: Zip | None = None,
) -> CustomerMatch:
    """Find a customer's id by email, or else by first name, last name and zip code.

    Ask for the email first; use name + zip only when the customer cannot give one. Matching
    ignores case in email and names. Returns the customer id for get_customer.
    """
    pool = _crm(ctx).pool
    if email is not None:
        return await store.find_customer_by_email(pool, email.strip())
    if first_name is None or last_name is None or zip is None:
        missing = next(
            n
            for n, v in (("first_name", first_name), ("last_name", last_name), ("zip", zip))
            if v is None
        )
        raise InvalidArgument(missing, "give an email, or first_name, last_name and zip")
    return await store.find_customer_by_name_zip(pool, first_name, last_name, zip)


async def get_customer(customer_id: CustomerId, ctx: Context) -> Customer:
    """A customer's name, email, default address, payment methods (gift cards with balance)
    and order ids.

    `customer_id` is the id find_customer returns, e.g. 'noah_brown_6181'.
    """
    return await store.get_customer(_crm(ctx), customer_id)


async def list_customer_orders(customer_id: CustomerId, ctx: Context) -> CustomerOrders:
    """Every order of a customer with its status, number of items and total, oldest first."""
    return await store.list_customer_orders(_crm(ctx).pool, customer_id)


async def get_order(order_id: OrderId, ctx: Context) -> Order:
    """One order: status, items with prices, shipping address, shipments with tracking ids,
    payments and refunds, and any cancel, return or exchange request.

    Statuses: 'pending' and 'pending (item modified)' (not yet shipped), 'processed'
    (shipping), 'delivered', 'cancelled', 'return requested', 'exchange requested'.
    """
    return await store.get_order(_crm(ctx).pool, order_id)


async def get_product(product_id: ProductId, ctx: Context) -> Product:
    """A product type and all its variants (items): options, availability and price.

    Use it to find the variant a customer wants before modifying or exchanging items.
    """
    return await store.get_product(_crm(ctx), product_id)


async def get_item(item_id: ItemId, ctx: Context) -> Item:
    """One item (a variant of a product): its options, availability, price and product."""
    return await store.get_item(_crm(ctx).pool, item_id)


async def list_product_types(ctx: Context) -> ProductTypes:
    """The name and product id of every product type in the store, sorted by name."""
    return await store.list_product_types(_crm(ctx).pool)


# --- actions ----------------------------------------------------------------------------------


async def update_customer_address(
    customer_id: CustomerId,
    address1: Address1,
    address2: Address2,
    city: City,
    state: State,
    country: Country,
    zip: Zip,
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Customer:
    """Change a customer's default address (existing orders keep theirs).

    Read the new address back to the customer and get an explicit yes first.
    Returns the customer as changed.
    """
    address = Address(
        address1=address1, address2=address2, city=city, state=state, country=country, zip=zip
    )
    return await store.update_customer_address(
        _crm(ctx), _caller(ctx), customer_id, address, idempotency_key
    )


async def cancel_pending_order(
    order_id: OrderId,
    reason: Annotated[
        CancelReason,
        Field(description="Why: exactly 'no longer needed' or 'ordered by mistake'."),
    ],
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Order:
    """Cancel an order whose status is exactly 'pending'; every payment is refunded.

    Refunds to a gift card reach its balance at once; other refunds take 5-7 business days.
    Processed, delivered and item-modified orders cannot be cancelled. Explain this to the
    customer and get an explicit yes first. Returns the cancelled order.
    """
    return await store.cancel_pending_order(
        _crm(ctx), _caller(ctx), order_id, reason, idempotency_key
    )


async def modify_pending_order_address(
    order_id: OrderId,
    address1: Address1,
    address2: Address2,
    city: City,
    state: State,
    country: Country,
    zip: Zip,
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Order:
    """Change the shipping address of a pending order (status 'pending' or
    'pending (item modified)').

    Read the new address back to the customer and get an explicit yes first.
    """
    address = Address(
        address1=address1, address2=address2, city=city, state=state, country=country, zip=zip
    )
    return await store.modify_pending_order_address(
        _crm(ctx), _caller(ctx), order_id, address, idempotency_key
    )


async def modify_pending_order_items(
    order_id: OrderId,
    item_ids: ItemIds,
    new_item_ids: NewItemIds,
    payment_method_id: Annotated[
        PaymentMethodId,
        Field(description="Pays or receives the price difference; a gift card must cover it."),
    ],
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Order:
    """Swap items of a 'pending' order for other available variants of the same products.

    This can be done only once per order: afterwards its status is 'pending (item modified)'
    and its items cannot change again, so collect every item the customer wants changed
    first. The price difference is charged to, or refunded to, `payment_method_id` (a gift
    card at once). Confirm the items, the difference and the payment method, and get an
    explicit yes first.
    """
    return await store.modify_pending_order_items(
        _crm(ctx),
        _caller(ctx),
        order_id,
        item_ids,
        new_item_ids,
        payment_method_id,
        idempotency_key,
    )


async def modify_pending_order_payment(
    order_id: OrderId,
    payment_method_id: Annotated[
        PaymentMethodId,
        Field(description="The customer's other payment method to pay the order with."),
    ],
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Order:
    """Pay a pending order with another of the customer's payment methods.

    The new method is charged the order amount and the old one refunded (a gift card at
    once; a gift card paying must hold enough). Only for an order with exactly one payment
    so far. Get an explicit yes first.
    """
    return await store.modify_pending_order_payment(
        _crm(ctx), _caller(ctx), order_id, payment_method_id, idempotency_key
    )


async def return_delivered_order_items(
    order_id: OrderId,
    item_ids: ItemIds,
    payment_method_id: Annotated[
        PaymentMethodId,
        Field(
            description="Receives the refund: the order's original payment method or a "
            "gift card of the customer."
        ),
    ],
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Order:
    """Request the return of items of a 'delivered' order; its status becomes
    'return requested'.

    A delivered order can be returned or exchanged only once, so collect every item first.
    The customer gets an email on how to send the items back. Confirm the items and the
    refund method and get an explicit yes first.
    """
    return await store.return_delivered_order_items(
        _crm(ctx), _caller(ctx), order_id, item_ids, payment_method_id, idempotency_key
    )


async def exchange_delivered_order_items(
    order_id: OrderId,
    item_ids: ItemIds,
    new_item_ids: NewItemIds,
    payment_method_id: Annotated[
        PaymentMethodId,
        Field(description="Pays or receives the price difference; a gift card must cover it."),
    ],
    ctx: Context,
    idempotency_key: IdempotencyKey | None = None,
) -> Order:
    """Request an exchange of items of a 'delivered' order for other available variants of
    the same products; its status becomes 'exchange requested'.

    A delivered order can be returned or exchanged only once, so collect every item first.
    The price difference is recorded for `payment_method_id`. Confirm the items, the
    difference and the payment method, and get an explicit yes first.
    """
    return await store.exchange_delivered_order_items(
        _crm(ctx),
        _caller(ctx),
        order_id,
        item_ids,
        new_item_ids,
        payment_method_id,
        idempotency_key,
    )


# --- resources and completions ----------------------------------------------------------------


async def customer_resource(customer_id: str, ctx: Context) -> dict[str, Any]:
    """A customer with their payment methods and order ids, as JSON."""
    customer = await store.get_customer(_crm(ctx), customer_id)
    return customer.model_dump(mode="json")


async def policy_resource(ctx: Context) -> str:
    """The store's support policy, as loaded with `supportmesh crm load`."""
    text = await store.get_policy(_crm(ctx).pool)
    if text is None:
        raise NotFound("policy", "no policy loaded; run `supportmesh crm load DIR`")
    return text


async def complete_customer_id(
    crm: Crm, ref: str, argument: str, prefix: str, _others: dict[str, str]
) -> list[str]:
    """Customer ids starting with what was typed."""
    if argument != "customer_id" or ref != "crm://customers/{customer_id}":
        return []
    return await values_starting_with(
        crm.pool,
        "SELECT customer_id FROM customers WHERE customer_id LIKE %s "
        "ORDER BY customer_id LIMIT 101",
        prefix,
    )


def build_server(settings: Settings) -> FastMCP[Any]:
    """The CRM server, on the backends named in ``settings`` (all URLs set)."""
    assert settings.redis_url and settings.postgres_url, "start_backends fills in the URLs"
    redis_url, postgres_url = settings.redis_url, settings.postgres_url

    @contextlib.asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[Crm]:
        cache = ReadCache(redis_url, cache_prefix(NAME, postgres_url), settings.cache_ttl_seconds)
        try:
            async with schema_with_outbox(settings, NAME, MIGRATIONS) as pool:
                yield Crm(pool=pool, cache=cache, settings=settings)
        finally:
            await cache.close()

    server = new_server(NAME, INSTRUCTIONS, lifespan, settings, complete_customer_id)
    for read in (
        find_customer,
        get_customer,
        list_customer_orders,
        get_order,
        get_product,
        get_item,
        list_product_types,
    ):
        server.tool(annotations=READ)(read)
    for action in (
        update_customer_address,
        cancel_pending_order,
        modify_pending_order_address,
        modify_pending_order_items,
        modify_pending_order_payment,
        return_delivered_order_items,
        exchange_delivered_order_items,
    ):
        server.tool(annotations=ACT)(action)
    server.resource("crm://customers/{customer_id}", name="customer", mime_type="application/json")(
        customer_resource
    )
    server.resource("crm://policy", name="policy", mime_type="text/markdown")(policy_resource)
    return server
