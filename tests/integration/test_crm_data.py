"""The full shared retail store: `supportmesh crm load` and `export`, and the CRM over HTTP on it.

The store (500 customers, 1,000 orders, 50 products) is read from ``../shared/data``; it is
never copied into the repository.
"""

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastmcp import Client

from servers.runtime.settings import Settings
from tests.conftest import (
    SUPPORTMESH,
    fresh_database,
    require_shared_data,
    serving_over_http,
    supportmesh_env,
    token,
)
from tests.integration.test_ticketing_tools import call, refused

RETAIL = require_shared_data() / "tau2" / "retail"


@pytest.fixture(scope="module")
def retail(backends: Settings) -> Iterator[Settings]:
    """A database of its own holding the shared retail store, loaded by the CLI."""
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url:
        settings = backends.model_copy(update={"postgres_url": url})
        yield settings


def supportmesh(settings: Settings, *args: str) -> str:
    done = subprocess.run(
        [SUPPORTMESH, *args],
        env=supportmesh_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_load_twice_changes_nothing_and_export_round_trips(
    retail: Settings, tmp_path: Path
) -> None:
    first = supportmesh(retail, "crm", "load", str(RETAIL))
    assert "customers  500 added, 0 changed, 0 unchanged" in first
    assert "orders     1000 added" in first and "policy     loaded" in first
    again = supportmesh(retail, "crm", "load", str(RETAIL / "db.json"))
    assert "customers  0 added, 0 changed, 500 unchanged" in again
    assert "products   0 added, 0 changed, 50 unchanged" in again
    assert "orders     0 added, 0 changed, 1000 unchanged" in again
    out = tmp_path / "export.json"
    supportmesh(retail, "crm", "export", str(out))
    assert json.loads(out.read_text()) == json.loads((RETAIL / "db.json").read_text())


def test_load_refuses_a_malformed_file_and_writes_nothing(retail: Settings, tmp_path: Path) -> None:
    supportmesh(retail, "crm", "load", str(RETAIL))
    document = json.loads((RETAIL / "db.json").read_text())
    first_order = next(iter(document["orders"]))
    document["orders"][first_order]["status"] = "lost in space"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    done = subprocess.run(
        [SUPPORTMESH, "crm", "load", str(bad)],
        env=supportmesh_env(retail),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"orders.{first_order}" in done.stderr
    again = supportmesh(retail, "crm", "load", str(RETAIL / "db.json"))
    assert "orders     0 added, 0 changed, 1000 unchanged" in again


@pytest.fixture(scope="module")
def retail_http(retail: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    supportmesh(retail, "crm", "load", str(RETAIL))
    with serving_over_http("crm", retail, tmp_path_factory.mktemp("crm-http")) as url:
        yield url


def first_order(retail: Settings, status: str, *, paid_by: str) -> dict[str, Any]:
    """The first order of the store in ``status`` paid with a method of kind ``paid_by``."""
    assert retail.postgres_url
    with psycopg.connect(retail.postgres_url) as conn:
        row = conn.execute(
            """SELECT record FROM crm.orders
               WHERE status = %s AND record->'payment_history'->0->>'payment_method_id' LIKE %s
               ORDER BY position LIMIT 1""",
            [status, paid_by + "%"],
        ).fetchone()
    assert row is not None
    order: dict[str, Any] = row[0]
    return order


async def test_actions_on_real_orders_over_http(retail_http: str, retail: Settings) -> None:
    async with Client(retail_http, auth=token(retail)) as client:
        assert await call(client, "find_customer", email="noah.brown7922@example.com") == {
            "customer_id": "noah_brown_6181"
        }
        tools = {t.name for t in await client.list_tools()}
        assert len(tools) == 14

        pending = first_order(retail, "pending", paid_by="gift_card")
        card = pending["payment_history"][0]["payment_method_id"]
        customer = await call(client, "get_customer", customer_id=pending["customer_id"])
        balance = Decimal(str(customer["payment_methods"][card]["balance"]))
        cancelled = await call(
            client,
            "cancel_pending_order",
            order_id=pending["order_id"],
            reason="no longer needed",
        )
        assert cancelled["status"] == "cancelled"
        customer = await call(client, "get_customer", customer_id=pending["customer_id"])
        paid = Decimal(str(pending["payment_history"][0]["amount"]))
        assert Decimal(str(customer["payment_methods"][card]["balance"])) == balance + paid

        delivered = first_order(retail, "delivered", paid_by="credit_card")
        line = delivered["items"][0]
        product = await call(client, "get_product", product_id=line["product_id"])
        other = next(
            v
            for v in product["variants"].values()
            if v["available"] and v["item_id"] != line["item_id"]
        )
        exchanged = await call(
            client,
            "exchange_delivered_order_items",
            order_id=delivered["order_id"],
            item_ids=[line["item_id"]],
            new_item_ids=[other["item_id"]],
            payment_method_id=delivered["payment_history"][0]["payment_method_id"],
        )
        difference = Decimal(str(other["price"])) - Decimal(str(line["price"]))
        assert Decimal(str(exchanged["exchange_price_difference"])) == difference
        message = await refused(
            client,
            "return_delivered_order_items",
            order_id=delivered["order_id"],
            item_ids=[line["item_id"]],
            payment_method_id=delivered["payment_history"][0]["payment_method_id"],
        )
        assert message.endswith("is exchange requested, not delivered")

        processed = first_order(retail, "processed", paid_by="")
        message = await refused(
            client,
            "modify_pending_order_address",
            order_id=processed["order_id"],
            address1="1 Main St",
            address2="",
            city="Austin",
            state="TX",
            country="USA",
            zip="73301",
        )
        assert (
            message
            == f"conflict: order_id: order {processed['order_id']} is processed, not pending"
        )


async def test_the_other_actions_on_real_records_over_http(
    retail_http: str, retail: Settings
) -> None:
    async with Client(retail_http, auth=token(retail)) as client:
        pending = first_order(retail, "pending", paid_by="credit_card")
        customer_id = pending["customer_id"]
        orders = await call(client, "list_customer_orders", customer_id=customer_id)
        assert pending["order_id"] in [o["order_id"] for o in orders["orders"]]
        types = await call(client, "list_product_types")
        assert len(types["products"]) == 50

        line = pending["items"][0]
        product = await call(client, "get_product", product_id=line["product_id"])
        other = next(
            v
            for v in product["variants"].values()
            if v["available"] and v["item_id"] != line["item_id"]
        )
        item = await call(client, "get_item", item_id=other["item_id"])
        assert item["product_id"] == line["product_id"]
        card = pending["payment_history"][0]["payment_method_id"]
        modified = await call(
            client,
            "modify_pending_order_items",
            order_id=pending["order_id"],
            item_ids=[line["item_id"]],
            new_item_ids=[other["item_id"]],
            payment_method_id=card,
        )
        assert modified["status"] == "pending (item modified)"
        difference = Decimal(str(other["price"])) - Decimal(str(line["price"]))
        last = modified["payment_history"][-1]
        assert last["transaction_type"] == ("payment" if difference > 0 else "refund")
        assert Decimal(str(last["amount"])) == abs(difference)

        customer = await call(client, "get_customer", customer_id=customer_id)
        others = [m for m in customer["payment_methods"] if m != card]
        if others:  # a second payment is on the order now: the payment can no longer change
            message = await refused(
                client,
                "modify_pending_order_payment",
                order_id=pending["order_id"],
                payment_method_id=others[0],
            )
            assert message.startswith("conflict: order_id:")

        address = {
            "address1": "9 Quay Street",
            "address2": "",
            "city": "Portland",
            "state": "ME",
            "country": "USA",
            "zip": "04101",
        }
        updated = await call(client, "update_customer_address", customer_id=customer_id, **address)
        assert updated["address"] == address
        found = await call(
            client,
            "find_customer",
            first_name=customer["name"]["first_name"],
            last_name=customer["name"]["last_name"],
            zip="04101",
        )
        assert found == {"customer_id": customer_id}

        delivered = first_order(retail, "delivered", paid_by="paypal")
        returned = await call(
            client,
            "return_delivered_order_items",
            order_id=delivered["order_id"],
            item_ids=[i["item_id"] for i in delivered["items"]],
            payment_method_id=delivered["payment_history"][0]["payment_method_id"],
        )
        assert returned["status"] == "return requested"
        assert returned["return_items"] == sorted(i["item_id"] for i in delivered["items"])
