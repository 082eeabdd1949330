"""The retail store file format of tau2-bench (`db.json`): read it into our records, and back.

The file is ``{"products": {id: …}, "users": {id: …}, "orders": {id: …}}``. Our records differ
only in calling a user a customer (``user_id`` -> ``customer_id``). Fields that are unset are
left out, as the reference's own file does, so that a load followed by an export gives back an
equal document.
"""

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.crm import Customer, Order, Product, Store
from servers.runtime.errors import InvalidArgument


def _rename(record: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new if key == old else key): value for key, value in record.items()}


def parse_store(document: dict[str, Any]) -> Store:
    """Our records from a reference document; ``invalid_argument`` names the bad record."""
    for section in ("products", "users", "orders"):
        if not isinstance(document.get(section), dict):
            raise InvalidArgument(section, "the file needs an object of records here")
    path = ""
    try:
        products = []
        for key, record in document["products"].items():
            path = f"products.{key}"
            products.append(Product.model_validate(record))
        customers = []
        for key, record in document["users"].items():
            path = f"users.{key}"
            customers.append(Customer.model_validate(_rename(record, "user_id", "customer_id")))
        orders = []
        for key, record in document["orders"].items():
            path = f"orders.{key}"
            orders.append(Order.model_validate(_rename(record, "user_id", "customer_id")))
    except (ValidationError, AttributeError) as exc:
        raise InvalidArgument(path, f"not a record of the retail format: {exc}") from exc
    return Store(customers=customers, orders=orders, products=products)


def read_store(path: Path) -> Store:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument("path", f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidArgument("path", f"{path} does not hold a JSON object")
    return parse_store(document)


def store_document(store: Store) -> dict[str, Any]:
    """The reference document for ``store``."""

    def dump(record: Customer | Order | Product) -> dict[str, Any]:
        return record.model_dump(mode="json", exclude_none=True)

    return {
        "products": {p.product_id: dump(p) for p in store.products},
        "users": {
            c.customer_id: _rename(dump(c), "customer_id", "user_id") for c in store.customers
        },
        "orders": {o.order_id: _rename(dump(o), "customer_id", "user_id") for o in store.orders},
    }
