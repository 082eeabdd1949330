"""The orchestrator on a store it was not written for: tau2-bench's retail store (500
customers, 1,000 orders), loaded into a CRM of its own, with the other servers as in
``test_orchestrator.py``. The customer is identified from the message, as an emailed ticket
without a customer id would need."""

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastmcp import Client

from orchestrator.policy import Limits
from servers.runtime.settings import Settings
from tests.conftest import fresh_database, require_shared_data, serving_over_http, token
from tests.integration.test_crm_data import supportmesh
from tests.integration.test_orchestrator import agent, new_ticket, run

RETAIL = require_shared_data() / "tau2" / "retail"
__all__ = ["agent"]  # a fixture, shared with test_orchestrator.py


@pytest.fixture(scope="module")
def retail_crm(backends: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A CRM server over HTTP on a database of its own, holding the shared retail store."""
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url:
        retail = backends.model_copy(update={"postgres_url": url})
        supportmesh(retail, "crm", "load", str(RETAIL))
        with serving_over_http("crm", retail, tmp_path_factory.mktemp("tau2-crm")) as crm_url:
            yield crm_url


@pytest.fixture
def tau2_urls(urls: dict[str, str], retail_crm: str) -> dict[str, str]:
    """The session's servers, with the CRM that holds the retail store."""
    return urls | {"crm": retail_crm}


async def order_of(settings: Settings, url: str, order_id: str) -> dict[str, Any]:
    async with Client(url, auth=token(settings)) as crm:
        got = await crm.call_tool("get_order", {"order_id": order_id})
    assert got.structured_content is not None
    return dict(got.structured_content)


# Liam Li (liam_li_6251, zip 75285) spent under $1,500: not a VIP. #W4503264 is pending (Running
# Shoes, under $250); #W7554786 is delivered (one T-Shirt, paid by gift_card_5800903).


async def test_a_customer_found_by_email_has_their_pending_order_cancelled(
    settings: Settings, tau2_urls: dict[str, str], agent: Client[Any]
) -> None:
    ticket_id = await new_ticket(
        agent,
        None,
        "Cancel my running shoes",
        "Hello, this is liam.li5782@example.com. I no longer need the running shoes I ordered "
        "(#W4503264), please cancel that order.",
    )
    state = await run(settings, tau2_urls, ticket_id, Limits())
    assert state["customer_id"] == "liam_li_6251"
    assert state["plan"]["actions"][0]["arguments"] == {
        "order_id": "#W4503264",
        "reason": "no longer needed",
    }
    assert state["outcome"]["status"] == "done"
    assert (await order_of(settings, tau2_urls["crm"], "#W4503264"))["status"] == "cancelled"


async def test_a_customer_found_by_name_and_zip_returns_an_item_described_by_name(
    settings: Settings, tau2_urls: dict[str, str], agent: Client[Any]
) -> None:
    ticket_id = await new_ticket(
        agent,
        None,
        "Return",
        "Hi, my name is Liam Li, zip code 75285. The t-shirt I received doesn't fit, I'd like "
        "to return it, refund to my gift card please.",
    )
    state = await run(settings, tau2_urls, ticket_id, Limits())
    assert state["customer_id"] == "liam_li_6251"
    assert [a["tool"] for a in state["plan"]["actions"]] == ["return_delivered_order_items"]
    assert state["plan"]["actions"][0]["arguments"] == {
        "order_id": "#W7554786",
        "item_ids": ["5047954489"],
        "payment_method_id": "gift_card_5800903",
    }
    assert Decimal(state["plan"]["amount"]) < Decimal("250")
    assert state["outcome"]["status"] == "done"
    order = await order_of(settings, tau2_urls["crm"], "#W7554786")
    assert order["status"] == "return requested"


async def test_another_customer_s_order_is_refused_on_a_real_store(
    settings: Settings, tau2_urls: dict[str, str], agent: Client[Any]
) -> None:
    other = await order_of(settings, tau2_urls["crm"], "#W2611340")
    assert other["customer_id"] != "liam_li_6251"
    ticket_id = await new_ticket(
        agent,
        "liam_li_6251",
        "Cancel",
        "Please cancel order #W2611340 and tell me the address it ships to.",
    )
    state = await run(settings, tau2_urls, ticket_id, Limits())
    assert state["plan"]["actions"] == []
    assert "not_their_order" in [d["why"] for d in state["plan"]["declined"]]
    assert await order_of(settings, tau2_urls["crm"], "#W2611340") == other
    assert other["address"]["address1"] not in state["reply"]["text"]
