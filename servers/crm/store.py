"""CRM records in PostgreSQL (schema ``crm``), with customer and product reads cached in Redis.

Each customer, order and product is one row holding the whole record (``schemas/crm.py``);
lookup columns are generated from it. Order actions run through ``perform_write``: one
transaction that locks the order (``NOWAIT``: a concurrent action on the same order gets
``conflict`` at once) and then its customer (whose gift cards may change), applies the rule from
``orders.py``, saves both records, and writes the audit row, the idempotency key and the
``agent.actions`` event. Cached customers and products are dropped after the write commits.
"""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from schemas.crm import (
    Address,
    CancelReason,
    Customer,
    CustomerMatch,
    CustomerOrders,
    Item,
    Order,
    OrderSummary,
    Product,
    ProductType,
    ProductTypes,
    Store,
)
from schemas.events import Topic
from servers.crm import orders as rules
from servers.runtime.auth import Caller
from servers.runtime.cache import ReadCache
from servers.runtime.database import Pool, Row
from servers.runtime.errors import InvalidArgument, NotFound
from servers.runtime.keys import joined_key
from servers.runtime.settings import Settings
from servers.runtime.writes import Write, lock_row, perform_write

SOURCE = "supportmesh/crm"
M = TypeVar("M", bound=BaseModel)


@dataclass
class Crm:
    """What the CRM's tools use, opened once when the server starts."""

    pool: Pool
    cache: ReadCache
    settings: Settings


def _customer_key(customer_id: str) -> str:
    return joined_key("customer", customer_id)


def _product_key(product_id: str) -> str:
    return joined_key("product", product_id)


async def _one(pool: Pool, sql: str, params: list[Any]) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        row: Row | None = await (await conn.execute(sql, params)).fetchone()
    return row


async def _cached(
    crm: Crm, key: str, model: type[M], sql: str, params: list[Any], field: str, missing: str
) -> M:
    if (hit := await crm.cache.get(key)) is not None:
        return model.model_validate_json(hit)
    row = await _one(crm.pool, sql, params)
    if row is None:
        raise NotFound(field, missing)
    record = model.model_validate(row["record"])
    await crm.cache.put(key, record.model_dump_json())
    return record


# --- reads ------------------------------------------------------------------------------------


async def get_customer(crm: Crm, customer_id: str) -> Customer:
    return await _cached(
        crm,
        _customer_key(customer_id),
        Customer,
        "SELECT record FROM customers WHERE customer_id = %s",
        [customer_id],
        "customer_id",
        f"no customer {customer_id}",
    )


async def get_product(crm: Crm, product_id: str) -> Product:
    return await _cached(
        crm,
        _product_key(product_id),
        Product,
        "SELECT record FROM products WHERE product_id = %s",
        [product_id],
        "product_id",
        f"no product {product_id} (is it an item id? try get_item)",
    )


async def find_customer_by_email(pool: Pool, email: str) -> CustomerMatch:
    row = await _one(
        pool,
        "SELECT customer_id FROM customers WHERE email = lower(%s) ORDER BY position LIMIT 1",
        [email],
    )
    if row is None:
        raise NotFound("email", "no customer with this email")
    return CustomerMatch(customer_id=row["customer_id"])


async def find_customer_by_name_zip(
    pool: Pool, first_name: str, last_name: str, zip: str
) -> CustomerMatch:
    row = await _one(
        pool,
        """SELECT customer_id FROM customers
           WHERE last_name = lower(%s) AND first_name = lower(%s) AND zip = %s
           ORDER BY position LIMIT 1""",
        [last_name, first_name, zip],
    )
    if row is None:
        raise NotFound("zip", "no customer with this first name, last name and zip")
    return CustomerMatch(customer_id=row["customer_id"])


async def get_order(pool: Pool, order_id: str) -> Order:
    row = await _one(pool, "SELECT record FROM orders WHERE order_id = %s", [order_id])
    if row is None:
        raise NotFound("order_id", f"no order {order_id}")
    return Order.model_validate(row["record"])


async def list_customer_orders(pool: Pool, customer_id: str) -> CustomerOrders:
    async with pool.connection() as conn:
        exists = await (
            await conn.execute("SELECT 1 FROM customers WHERE customer_id = %s", [customer_id])
        ).fetchone()
        if exists is None:
            raise NotFound("customer_id", f"no customer {customer_id}")
        rows = await (
            await conn.execute(
                "SELECT record FROM orders WHERE customer_id = %s ORDER BY position, order_id",
                [customer_id],
            )
        ).fetchall()
    summaries = []
    for row in rows:
        order = Order.model_validate(row["record"])
        summaries.append(
            OrderSummary(
                order_id=order.order_id,
                status=order.status,
                item_count=len(order.items),
                total=sum((item.price for item in order.items), start=Decimal(0)),
            )
        )
    return CustomerOrders(customer_id=customer_id, orders=summaries)


async def get_item(pool: Pool, item_id: str) -> Item:
    row = await _one(
        pool,
        "SELECT record FROM products WHERE record->'variants' ? %s ORDER BY position LIMIT 1",
        [item_id],
    )
    if row is None:
        raise NotFound("item_id", f"no item {item_id} (is it a product id? try get_product)")
    product = Product.model_validate(row["record"])
    variant = product.variants[item_id]
    return Item(**variant.model_dump(), product_id=product.product_id, product_name=product.name)


async def list_product_types(pool: Pool) -> ProductTypes:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute("SELECT name, product_id FROM products ORDER BY name, product_id")
        ).fetchall()
    return ProductTypes(products=[ProductType.model_validate(row) for row in rows])


async def get_policy(pool: Pool) -> str | None:
    row = await _one(pool, "SELECT text FROM policy", [])
    return None if row is None else str(row["text"])


# --- writes -----------------------------------------------------------------------------------

LOCK_ORDER = "SELECT record FROM orders WHERE order_id = %s FOR UPDATE NOWAIT"
LOCK_CUSTOMER = "SELECT record FROM customers WHERE customer_id = %s FOR UPDATE"
SAVE_ORDER = "UPDATE orders SET record = %s, updated_at = now() WHERE order_id = %s"
SAVE_CUSTOMER = "UPDATE customers SET record = %s, updated_at = now() WHERE customer_id = %s"
PRODUCTS = "SELECT record FROM products WHERE product_id = ANY(%s)"

# (order, customer, the order's products) -> the order and customer to save
OrderAction = Callable[[Order, Customer, dict[str, Product]], tuple[Order, Customer]]


async def _lock_customer(write: Write, customer_id: str) -> Customer:
    record = f"customer {customer_id}"
    row = await lock_row(write, LOCK_CUSTOMER, [customer_id], "customer_id", record)
    if row is None:
        raise NotFound("customer_id", f"no customer {customer_id}")
    return Customer.model_validate(row["record"])


async def _act_on_order(
    crm: Crm,
    caller: Caller,
    tool: str,
    event_type: str,
    arguments: dict[str, Any],
    idempotency_key: str | None,
    action: OrderAction,
    needs_products: bool = False,
) -> Order:
    order_id = str(arguments["order_id"])

    async def change(write: Write) -> Order:
        # A short wait for the customer row: another order of theirs may be changing a gift card.
        await write.conn.execute("SET LOCAL lock_timeout = '5s'")
        row = await lock_row(write, LOCK_ORDER, [order_id], "order_id", f"order {order_id}")
        if row is None:
            raise NotFound("order_id", f"no order {order_id}")
        before = Order.model_validate(row["record"])
        customer = await _lock_customer(write, before.customer_id)
        products: dict[str, Product] = {}
        if needs_products:
            ids = sorted({item.product_id for item in before.items})
            rows = await (await write.conn.execute(PRODUCTS, [ids])).fetchall()
            products = {
                r["record"]["product_id"]: Product.model_validate(r["record"]) for r in rows
            }
        order, changed_customer = action(before, customer, products)
        await write.conn.execute(SAVE_ORDER, [Jsonb(order.model_dump(mode="json")), order_id])
        if changed_customer != customer:
            await write.conn.execute(
                SAVE_CUSTOMER,
                [Jsonb(changed_customer.model_dump(mode="json")), customer.customer_id],
            )
        write.emit(
            Topic.AGENT_ACTIONS,
            event_type,
            f"order/{order_id}",
            {
                "order_id": order_id,
                "customer_id": order.customer_id,
                "status_before": before.status,
                "status": order.status,
                "arguments": {k: v for k, v in arguments.items() if k != "order_id"},
                "payments_added": [
                    p.model_dump(mode="json")
                    for p in order.payment_history[len(before.payment_history) :]
                ],
            },
        )
        return order

    order = await perform_write(
        crm.pool,
        source=SOURCE,
        tool=tool,
        caller=caller,
        arguments=arguments,
        idempotency_key=idempotency_key,
        result_type=Order,
        change=change,
    )
    await crm.cache.drop(_customer_key(order.customer_id))
    return order


async def cancel_pending_order(
    crm: Crm, caller: Caller, order_id: str, reason: CancelReason, idempotency_key: str | None
) -> Order:
    return await _act_on_order(
        crm,
        caller,
        "cancel_pending_order",
        "order.cancelled",
        {"order_id": order_id, "reason": reason},
        idempotency_key,
        lambda order, customer, _: rules.cancel_pending_order(order, customer, reason),
    )


async def modify_pending_order_address(
    crm: Crm, caller: Caller, order_id: str, address: Address, idempotency_key: str | None
) -> Order:
    return await _act_on_order(
        crm,
        caller,
        "modify_pending_order_address",
        "order.address_modified",
        {"order_id": order_id, "address": address.model_dump(mode="json")},
        idempotency_key,
        lambda order, customer, _: (rules.modify_pending_order_address(order, address), customer),
    )


async def modify_pending_order_items(
    crm: Crm,
    caller: Caller,
    order_id: str,
    item_ids: list[str],
    new_item_ids: list[str],
    payment_method_id: str,
    idempotency_key: str | None,
) -> Order:
    return await _act_on_order(
        crm,
        caller,
        "modify_pending_order_items",
        "order.items_modified",
        {
            "order_id": order_id,
            "item_ids": item_ids,
            "new_item_ids": new_item_ids,
            "payment_method_id": payment_method_id,
        },
        idempotency_key,
        lambda order, customer, products: rules.modify_pending_order_items(
            order, customer, products, item_ids, new_item_ids, payment_method_id
        ),
        needs_products=True,
    )


async def modify_pending_order_payment(
    crm: Crm, caller: Caller, order_id: str, payment_method_id: str, idempotency_key: str | None
) -> Order:
    return await _act_on_order(
        crm,
        caller,
        "modify_pending_order_payment",
        "order.payment_modified",
        {"order_id": order_id, "payment_method_id": payment_method_id},
        idempotency_key,
        lambda order, customer, _: rules.modify_pending_order_payment(
            order, customer, payment_method_id
        ),
    )


async def return_delivered_order_items(
    crm: Crm,
    caller: Caller,
    order_id: str,
    item_ids: list[str],
    payment_method_id: str,
    idempotency_key: str | None,
) -> Order:
    return await _act_on_order(
        crm,
        caller,
        "return_delivered_order_items",
        "order.return_requested",
        {"order_id": order_id, "item_ids": item_ids, "payment_method_id": payment_method_id},
        idempotency_key,
        lambda order, customer, _: (
            rules.return_delivered_order_items(order, customer, item_ids, payment_method_id),
            customer,
        ),
    )


async def exchange_delivered_order_items(
    crm: Crm,
    caller: Caller,
    order_id: str,
    item_ids: list[str],
    new_item_ids: list[str],
    payment_method_id: str,
    idempotency_key: str | None,
) -> Order:
    return await _act_on_order(
        crm,
        caller,
        "exchange_delivered_order_items",
        "order.exchange_requested",
        {
            "order_id": order_id,
            "item_ids": item_ids,
            "new_item_ids": new_item_ids,
            "payment_method_id": payment_method_id,
        },
        idempotency_key,
        lambda order, customer, products: (
            rules.exchange_delivered_order_items(
                order, customer, products, item_ids, new_item_ids, payment_method_id
            ),
            customer,
        ),
        needs_products=True,
    )


async def update_customer_address(
    crm: Crm, caller: Caller, customer_id: str, address: Address, idempotency_key: str | None
) -> Customer:
    async def change(write: Write) -> Customer:
        await write.conn.execute("SET LOCAL lock_timeout = '5s'")
        customer = await _lock_customer(write, customer_id)
        customer.address = address
        await write.conn.execute(
            SAVE_CUSTOMER, [Jsonb(customer.model_dump(mode="json")), customer_id]
        )
        write.emit(
            Topic.AGENT_ACTIONS,
            "customer.address_updated",
            f"customer/{customer_id}",
            {"customer_id": customer_id, "address": address.model_dump(mode="json")},
        )
        return customer

    customer = await perform_write(
        crm.pool,
        source=SOURCE,
        tool="update_customer_address",
        caller=caller,
        arguments={"customer_id": customer_id, "address": address.model_dump(mode="json")},
        idempotency_key=idempotency_key,
        result_type=Customer,
        change=change,
    )
    await crm.cache.drop(_customer_key(customer_id))
    return customer


# --- load and export --------------------------------------------------------------------------


# Tables in the order a load fills them (orders name customers), with their keys.
SECTIONS = (("customers", "customer_id"), ("products", "product_id"), ("orders", "order_id"))


@dataclass
class LoadReport:
    """What a load did, by kind of record: added, changed, already as in the file."""

    counts: dict[str, tuple[int, int, int]]
    policy: bool


UPSERT: LiteralString = """
WITH incoming AS (
    SELECT value AS record, ordinality::integer - 1 AS position
    FROM jsonb_array_elements(%(records)s) WITH ORDINALITY
)
INSERT INTO {table} ({key}, position, record)
SELECT record->>{key_text}, position, record FROM incoming
ON CONFLICT ({key}) DO UPDATE
    SET record = EXCLUDED.record, position = EXCLUDED.position, updated_at = now()
    WHERE ({table}.record, {table}.position) IS DISTINCT FROM (EXCLUDED.record, EXCLUDED.position)
RETURNING (xmax = 0) AS added
"""


async def load_store(crm: Crm, store: Store, policy: str | None) -> LoadReport:
    """Upsert every record of ``store`` (and the policy) in one transaction.

    Loading the same file again changes no row. Records in the database but not in the file
    stay as they are.
    """
    records: dict[str, list[BaseModel]] = {
        "customers": list(store.customers),
        "products": list(store.products),
        "orders": list(store.orders),
    }
    counts: dict[str, tuple[int, int, int]] = {}
    try:
        async with crm.pool.connection() as conn, conn.transaction():
            for table, key in SECTIONS:
                upsert = sql.SQL(UPSERT).format(
                    table=sql.Identifier(table), key=sql.Identifier(key), key_text=sql.Literal(key)
                )
                documents = [record.model_dump(mode="json") for record in records[table]]
                cur = await conn.execute(upsert, {"records": Jsonb(documents)})
                rows = await cur.fetchall()
                added = sum(1 for row in rows if row["added"])
                counts[table] = (added, len(rows) - added, len(documents) - len(rows))
            if policy is not None:
                await conn.execute(
                    """INSERT INTO policy (text) VALUES (%s) ON CONFLICT (only_row) DO UPDATE
                       SET text = EXCLUDED.text, updated_at = now()
                       WHERE policy.text IS DISTINCT FROM EXCLUDED.text""",
                    [policy],
                )
    except psycopg.errors.ForeignKeyViolation as exc:
        raise InvalidArgument(
            "orders", f"an order names a customer not in the file: {exc}"
        ) from exc
    await crm.cache.drop_all()
    return LoadReport(counts=counts, policy=policy is not None)


async def export_store(pool: Pool) -> Store:
    """Every record, in the order they were loaded, as of one moment."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        sections = {}
        for table, key in SECTIONS:
            select = sql.SQL("SELECT record FROM {} ORDER BY position, {}").format(
                sql.Identifier(table), sql.Identifier(key)
            )
            cur = await conn.execute(select)
            sections[table] = [row["record"] for row in await cur.fetchall()]
    return Store.model_validate(sections)
