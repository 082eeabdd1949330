"""Every CRM tool through an MCP client, on real PostgreSQL, Redis and Kafka.

Each test starts from the demo store (``servers/crm/demo``) loaded afresh. Effects are checked
in the database; every refusal is a typed tool error and leaves every CRM table as it was.
"""

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastmcp import Client, FastMCP

from servers.crm.server import build_server as build_crm
from servers.crm.store import Crm
from servers.runtime.backends import embedded_redis
from servers.runtime.cache import cache_prefix
from servers.runtime.settings import Settings
from tests.conftest import read_events
from tests.integration.test_ticketing_tools import call, refused

Db = psycopg.AsyncConnection[Any]
TABLES = {
    "customers": "(t.customer_id, t.record)::text",
    "orders": "(t.order_id, t.record)::text",
    "products": "(t.product_id, t.record)::text",
    "outbox": "(t.id, t.topic, t.key, t.event)::text",
    "audit": "t::text",
    "idempotency_keys": "t::text",
}
ADDRESS = {
    "address1": "1 New Street",
    "address2": "Floor 2",
    "city": "Boston",
    "state": "MA",
    "country": "USA",
    "zip": "02101",
}
pytestmark = pytest.mark.usefixtures("demo_store")


async def snapshot(db: Db) -> dict[str, str | None]:
    digests = {}
    for table, row_text in TABLES.items():
        cur = await db.execute(
            f"SELECT md5(string_agg({row_text}, ',' ORDER BY {row_text})) FROM crm.{table} t"
        )
        row = await cur.fetchone()
        digests[table] = row[0] if row else None
    return digests


async def refused_unchanged(db: Db, client: Client[Any], tool: str, **arguments: Any) -> str:
    before = await snapshot(db)
    message = await refused(client, tool, **arguments)
    assert await snapshot(db) == before, f"{tool} refused but changed the database"
    return message


async def record(db: Db, table: str, key: str, value: str) -> dict[str, Any]:
    cur = await db.execute(f"SELECT record FROM crm.{table} WHERE {key} = %s", [value])
    row = await cur.fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


async def gift_card(db: Db, customer_id: str, card: str) -> float:
    customer = await record(db, "customers", "customer_id", customer_id)
    return float(customer["payment_methods"][card]["balance"])


# --- reads ------------------------------------------------------------------------------------


async def test_find_customer_by_email_or_name_and_zip(crm: Client[Any]) -> None:
    assert await call(crm, "find_customer", email="ADA.Quill@example.org") == {
        "customer_id": "ada_quill_1001"
    }
    found = await call(crm, "find_customer", first_name="ben", last_name="ORTIZ", zip="73301")
    assert found == {"customer_id": "ben_ortiz_1002"}


async def test_find_customer_refusals_name_the_field(crm: Client[Any]) -> None:
    assert await refused(crm, "find_customer", email="nobody@example.org") == (
        "not_found: email: no customer with this email"
    )
    message = await refused(crm, "find_customer", first_name="Ben", last_name="Ortiz")
    assert message == "invalid_argument: zip: give an email, or first_name, last_name and zip"
    assert (
        await refused(crm, "find_customer", first_name="Ben", last_name="Ortiz", zip="1")
    ).startswith("not_found: zip:")


async def test_customer_orders_products_and_items(crm: Client[Any]) -> None:
    customer = await call(crm, "get_customer", customer_id="ada_quill_1001")
    assert customer["payment_methods"]["gift_card_9000001"]["balance"] == 40.0
    assert customer["orders"] == ["#W9000001", "#W9000002", "#W9000003"]
    orders = await call(crm, "list_customer_orders", customer_id="ada_quill_1001")
    assert [(o["order_id"], o["status"], o["total"]) for o in orders["orders"]] == [
        ("#W9000001", "pending", 93.6),
        ("#W9000002", "delivered", 168.0),
        ("#W9000003", "pending", 19.5),
    ]
    order = await call(crm, "get_order", order_id="#W9000002")
    assert [i["item_id"] for i in order["items"]] == ["2000000011", "2000000011", "2000000031"]
    product = await call(crm, "get_product", product_id="1000000001")
    assert product["variants"]["2000000014"]["available"] is False
    item = await call(crm, "get_item", item_id="2000000033")
    assert (item["product_id"], item["product_name"], item["price"]) == (
        "1000000003",
        "Rain Jacket",
        139.75,
    )
    types = await call(crm, "list_product_types")
    names = [p["name"] for p in types["products"]]
    assert names == sorted(names) and "Travel Mug" in names


async def test_reads_of_unknown_ids_are_not_found(crm: Client[Any]) -> None:
    assert await refused(crm, "get_customer", customer_id="nobody_1") == (
        "not_found: customer_id: no customer nobody_1"
    )
    assert await refused(crm, "get_order", order_id="#W0000000") == (
        "not_found: order_id: no order #W0000000"
    )
    assert (await refused(crm, "get_product", product_id="2000000011")).startswith(
        "not_found: product_id:"
    )
    assert (await refused(crm, "get_item", item_id="1000000001")).startswith("not_found: item_id:")
    assert (await refused(crm, "get_order", order_id="W9000001")).startswith(
        "invalid_argument: order_id:"
    )
    assert (await refused(crm, "list_customer_orders", customer_id="nobody_1")).startswith(
        "not_found: customer_id:"
    )


async def test_resources_serve_a_customer_and_the_policy(crm: Client[Any]) -> None:
    contents = await crm.read_resource("crm://customers/cleo_park_1003")
    text = contents[0].text  # type: ignore[union-attr]
    assert json.loads(text)["email"] == "cleo.park@example.org"
    policy = await crm.read_resource("crm://policy")
    assert "Demo store policy" in policy[0].text  # type: ignore[union-attr]
    templates = await crm.list_resource_templates()
    assert [t.uriTemplate for t in templates] == ["crm://customers/{customer_id}"]


# --- actions ----------------------------------------------------------------------------------


async def test_cancel_refunds_to_the_gift_card_audits_and_emits(
    crm: Client[Any], db: Db, settings: Settings
) -> None:
    order = await call(
        crm, "cancel_pending_order", order_id="#W9000003", reason="ordered by mistake"
    )
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "ordered by mistake")
    stored = await record(db, "orders", "order_id", "#W9000003")
    assert stored["payment_history"][-1] == {
        "transaction_type": "refund",
        "amount": 19.5,
        "payment_method_id": "gift_card_9000001",
    }
    assert await gift_card(db, "ada_quill_1001", "gift_card_9000001") == 59.5
    cur = await db.execute(
        "SELECT tool, subject FROM crm.audit WHERE subject = 'order/#W9000003' ORDER BY at DESC"
    )
    assert (await cur.fetchone()) == ("cancel_pending_order", "order/#W9000003")
    assert settings.kafka_bootstrap
    events = await read_events(
        settings.kafka_bootstrap,
        "agent.actions",
        lambda evs: any(
            e.type == "order.cancelled" and e.subject == "order/#W9000003" for e in evs
        ),
    )
    event = next(
        e for e in events if e.type == "order.cancelled" and e.subject == "order/#W9000003"
    )
    assert event.data["status_before"] == "pending"
    assert event.data["payments_added"][0]["amount"] == 19.5


async def test_cancel_refusals_change_nothing(crm: Client[Any], db: Db) -> None:
    assert (
        await refused_unchanged(
            db, crm, "cancel_pending_order", order_id="#W9000002", reason="no longer needed"
        )
        == "conflict: order_id: order #W9000002 is delivered, not pending"
    )
    message = await refused_unchanged(
        db, crm, "cancel_pending_order", order_id="#W9000001", reason="too expensive"
    )
    assert message.startswith("invalid_argument: reason:")
    assert (
        await refused_unchanged(
            db, crm, "cancel_pending_order", order_id="#W9999999", reason="no longer needed"
        )
        == "not_found: order_id: no order #W9999999"
    )


async def test_modify_items_once_then_refused(crm: Client[Any], db: Db) -> None:
    order = await call(
        crm,
        "modify_pending_order_items",
        order_id="#W9000001",
        item_ids=["2000000011", "2000000022"],
        new_item_ids=["2000000013", "2000000021"],
        payment_method_id="credit_card_9000002",
    )
    assert order["status"] == "pending (item modified)"
    assert order["payment_history"][-1]["amount"] == 20.64
    stored = await record(db, "orders", "order_id", "#W9000001")
    assert [i["item_id"] for i in stored["items"]] == ["2000000013", "2000000021"]
    message = await refused_unchanged(
        db,
        crm,
        "modify_pending_order_items",
        order_id="#W9000001",
        item_ids=["2000000013"],
        new_item_ids=["2000000011"],
        payment_method_id="credit_card_9000002",
    )
    assert message == "conflict: order_id: order #W9000001 is pending (item modified), not pending"


@pytest.mark.parametrize(
    ("item_ids", "new_item_ids", "method", "expected"),
    [
        (["2000000011"], ["2000000014"], "credit_card_9000002", "conflict: new_item_ids:"),
        (["2000000011"], ["2000000021"], "credit_card_9000002", "invalid_argument: new_item_ids:"),
        (["2000000011"], ["2000000011"], "credit_card_9000002", "invalid_argument: new_item_ids:"),
        (
            ["2000000011"],
            ["2000000012", "2000000013"],
            "credit_card_9000002",
            "invalid_argument: new_item_ids:",
        ),
        (["2000000031"], ["2000000032"], "credit_card_9000002", "invalid_argument: item_ids:"),
        (["2000000011"], ["2000000012"], "paypal_9000003", "not_found: payment_method_id:"),
        (["2000000011"], ["2000000012"], "bitcoin_1", "invalid_argument: payment_method_id:"),
        ([], [], "credit_card_9000002", "invalid_argument: item_ids:"),
    ],
)
async def test_modify_items_refusals_change_nothing(
    crm: Client[Any],
    db: Db,
    item_ids: list[str],
    new_item_ids: list[str],
    method: str,
    expected: str,
) -> None:
    message = await refused_unchanged(
        db,
        crm,
        "modify_pending_order_items",
        order_id="#W9000001",
        item_ids=item_ids,
        new_item_ids=new_item_ids,
        payment_method_id=method,
    )
    assert message.startswith(expected), message


async def test_modify_address_and_payment(crm: Client[Any], db: Db) -> None:
    order = await call(crm, "modify_pending_order_address", order_id="#W9000003", **ADDRESS)
    assert order["address"] == ADDRESS
    order = await call(
        crm,
        "modify_pending_order_payment",
        order_id="#W9000003",
        payment_method_id="credit_card_9000002",
    )
    assert [p["transaction_type"] for p in order["payment_history"]] == [
        "payment",
        "payment",
        "refund",
    ]
    assert await gift_card(db, "ada_quill_1001", "gift_card_9000001") == 59.5
    message = await refused_unchanged(
        db,
        crm,
        "modify_pending_order_payment",
        order_id="#W9000001",
        payment_method_id="gift_card_9000001",
    )
    assert message.startswith("conflict: payment_method_id: gift card gift_card_9000001 holds")
    address = {**ADDRESS, "zip": ""}
    message = await refused_unchanged(
        db, crm, "modify_pending_order_address", order_id="#W9000002", **address
    )
    assert message.startswith("invalid_argument: zip:")


async def test_update_customer_address(crm: Client[Any], db: Db) -> None:
    customer = await call(crm, "update_customer_address", customer_id="ben_ortiz_1002", **ADDRESS)
    assert customer["address"] == ADDRESS
    assert (await record(db, "customers", "customer_id", "ben_ortiz_1002"))["address"] == ADDRESS
    assert (await call(crm, "get_customer", customer_id="ben_ortiz_1002"))["address"] == ADDRESS
    message = await refused_unchanged(
        db, crm, "update_customer_address", customer_id="nobody_1", **ADDRESS
    )
    assert message == "not_found: customer_id: no customer nobody_1"


async def test_return_and_exchange_delivered_orders_once(crm: Client[Any], db: Db) -> None:
    message = await refused_unchanged(
        db,
        crm,
        "return_delivered_order_items",
        order_id="#W9000002",
        item_ids=["2000000011"],
        payment_method_id="credit_card_9000002",
    )
    assert message.startswith("invalid_argument: payment_method_id: a refund goes to")
    order = await call(
        crm,
        "return_delivered_order_items",
        order_id="#W9000002",
        item_ids=["2000000031", "2000000011"],
        payment_method_id="gift_card_9000001",
    )
    assert (order["status"], order["return_items"]) == (
        "return requested",
        ["2000000011", "2000000031"],
    )
    order = await call(
        crm,
        "exchange_delivered_order_items",
        order_id="#W9000004",
        item_ids=["2000000021"],
        new_item_ids=["2000000023"],
        payment_method_id="paypal_9000003",
    )
    assert (order["status"], order["exchange_price_difference"]) == ("exchange requested", -28.64)
    for tool, extra in (
        ("return_delivered_order_items", {}),
        ("exchange_delivered_order_items", {"new_item_ids": ["2000000022"]}),
    ):
        message = await refused_unchanged(
            db,
            crm,
            tool,
            order_id="#W9000004",
            item_ids=["2000000021"],
            payment_method_id="paypal_9000003",
            **extra,
        )
        assert message == "conflict: order_id: order #W9000004 is exchange requested, not delivered"


# --- idempotency and concurrency --------------------------------------------------------------


async def test_the_same_idempotency_key_refunds_once(crm: Client[Any], db: Db) -> None:
    key = f"cancel-{uuid.uuid4()}"
    first = await call(
        crm,
        "cancel_pending_order",
        order_id="#W9000003",
        reason="no longer needed",
        idempotency_key=key,
    )
    again = await call(
        crm,
        "cancel_pending_order",
        order_id="#W9000003",
        reason="no longer needed",
        idempotency_key=key,
    )
    assert again == first
    assert await gift_card(db, "ada_quill_1001", "gift_card_9000001") == 59.5
    message = await refused_unchanged(
        db,
        crm,
        "cancel_pending_order",
        order_id="#W9000003",
        reason="ordered by mistake",
        idempotency_key=key,
    )
    assert message.startswith("conflict: idempotency_key:")


async def test_an_order_locked_by_another_write_is_a_conflict(
    crm: Client[Any], settings: Settings
) -> None:
    assert settings.postgres_url
    async with await psycopg.AsyncConnection.connect(settings.postgres_url) as other:
        await other.execute("SELECT 1 FROM crm.orders WHERE order_id = '#W9000003' FOR UPDATE")
        message = await refused(
            crm, "cancel_pending_order", order_id="#W9000003", reason="no longer needed"
        )
        assert message == (
            "conflict: order_id: order #W9000003 is being changed by another call; retry"
        )
        await other.rollback()
    await call(crm, "cancel_pending_order", order_id="#W9000003", reason="no longer needed")


async def test_two_clients_acting_on_one_order_at_once(crm_server: FastMCP[Any], db: Db) -> None:
    """One wins; the other gets conflict (locked, or no longer pending); one refund only."""
    async with Client(crm_server) as first, Client(crm_server) as second:
        results = await asyncio.gather(
            *(
                client.call_tool(tool, {"order_id": "#W9000003", **arguments}, raise_on_error=False)
                for client, tool, arguments in (
                    (first, "cancel_pending_order", {"reason": "no longer needed"}),
                    (
                        second,
                        "modify_pending_order_payment",
                        {"payment_method_id": "credit_card_9000002"},
                    ),
                )
            )
        )
    outcomes = sorted(r.is_error for r in results)
    assert outcomes == [False, True]
    loser = next(r for r in results if r.is_error)
    assert loser.content[0].text.startswith("conflict:")
    # Either action refunds the 19.50 to the gift card exactly once.
    assert await gift_card(db, "ada_quill_1001", "gift_card_9000001") == 59.5


# --- the cache --------------------------------------------------------------------------------


async def test_reads_are_cached_and_writes_drop_the_cache(
    crm: Client[Any], demo_store: Crm, settings: Settings
) -> None:
    assert settings.postgres_url
    key = cache_prefix("crm", settings.postgres_url) + "customer:ada_quill_1001"
    await call(crm, "get_customer", customer_id="ada_quill_1001")
    assert await demo_store.cache.redis.exists(key) == 1
    await call(crm, "cancel_pending_order", order_id="#W9000003", reason="no longer needed")
    assert await demo_store.cache.redis.get(key) == b""  # dropped: a marker, not the old value
    customer = await call(crm, "get_customer", customer_id="ada_quill_1001")
    assert customer["payment_methods"]["gift_card_9000001"]["balance"] == 59.5


async def test_a_read_that_began_before_a_write_does_not_cache_the_old_value(
    demo_store: Crm,
) -> None:
    cache = demo_store.cache
    stale = b'{"old": true}'
    await cache.drop("customer:race")  # a write committed and dropped the key...
    await cache.put("customer:race", stale)  # ...then a slow reader puts what it read before
    assert await cache.get("customer:race") is None


async def test_without_redis_reads_and_writes_still_work(
    settings: Settings, tmp_path: Path, demo_store: Crm
) -> None:
    """A CRM server on a Redis of its own, which stops while the server runs."""
    redis = contextlib.ExitStack()
    redis_url = redis.enter_context(embedded_redis(tmp_path))
    server = build_crm(settings.model_copy(update={"redis_url": redis_url}))
    async with Client(server) as client:
        await call(client, "get_customer", customer_id="ada_quill_1001")  # now cached
        redis.close()  # Redis is gone: reads and writes go to PostgreSQL alone
        assert (await call(client, "get_customer", customer_id="ada_quill_1001"))["email"]
        await call(client, "cancel_pending_order", order_id="#W9000003", reason="no longer needed")
        customer = await call(client, "get_customer", customer_id="ada_quill_1001")
        assert customer["payment_methods"]["gift_card_9000001"]["balance"] == 59.5
        product = await call(client, "get_product", product_id="1000000002")
        assert len(product["variants"]) == 3
