"""The ticketing server over its real transports: streamable HTTP and stdio, each in a process.

The same scenario runs over both; HTTP also serves probes and metrics and refuses requests whose
Host or Origin is not ours (DNS-rebinding protection).
"""

import uuid
from typing import Any

import httpx
import mcp.types as mt
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from servers.runtime.settings import Settings
from tests.conftest import SUPPORTMESH, supportmesh_env, token

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


async def exercise_ticketing(client: Client[Any]) -> None:
    """A support agent's round trip: open, find, work, reply, close; and one refusal."""
    tools = {t.name for t in await client.list_tools()}
    assert {
        "create_ticket",
        "get_ticket",
        "search_tickets",
        "update_ticket",
        "add_comment",
        "close_ticket",
    } <= tools
    marker = uuid.uuid4().hex[:8]
    created = await client.call_tool(
        "create_ticket",
        {
            "subject": f"Refund not received {marker}",
            "description": "Returned the lamp in May.",
            "priority": "high",
            "idempotency_key": marker,
        },
    )
    assert created.structured_content
    tid = created.structured_content["id"]
    again = await client.call_tool(
        "create_ticket",
        {
            "subject": f"Refund not received {marker}",
            "description": "Returned the lamp in May.",
            "priority": "high",
            "idempotency_key": marker,
        },
    )
    assert again.structured_content and again.structured_content["id"] == tid
    found = await client.call_tool("search_tickets", {"text": marker})
    assert found.structured_content
    assert [t["id"] for t in found.structured_content["tickets"]] == [tid]
    await client.call_tool("update_ticket", {"ticket_id": tid, "status": "open"})
    await client.call_tool("add_comment", {"ticket_id": tid, "body": "Refunded.", "public": True})
    closed = await client.call_tool("close_ticket", {"ticket_id": tid})
    assert closed.structured_content and closed.structured_content["status"] == "closed"
    refused = await client.call_tool(
        "update_ticket", {"ticket_id": tid, "status": "open"}, raise_on_error=False
    )
    assert refused.is_error
    assert isinstance(refused.content[0], mt.TextContent)
    assert refused.content[0].text.startswith("conflict: ticket_id: ")
    resource = await client.read_resource(f"tickets://{tid}")
    assert isinstance(resource[0], mt.TextResourceContents) and marker in resource[0].text
    prompts = {p.name for p in await client.list_prompts()}
    assert "summarize-ticket" in prompts


async def test_ticketing_over_streamable_http(ticketing_http: str, settings: Settings) -> None:
    async with Client(ticketing_http, auth=token(settings)) as client:
        await exercise_ticketing(client)


async def test_ticketing_over_stdio(settings: Settings) -> None:
    transport = StdioTransport(
        command=SUPPORTMESH,
        args=["serve", "ticketing", "--transport", "stdio"],
        env=supportmesh_env(settings),
        keep_alive=False,
    )
    async with Client(transport) as client:
        await exercise_ticketing(client)


async def test_http_serves_probes_and_metrics(ticketing_http: str, settings: Settings) -> None:
    base = ticketing_http.removesuffix("/mcp")
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok", "server": "ticketing"}
        ready = (await http.get("/readyz")).json()
        assert ready == {"ready": True, "backends": {"postgres": "ok", "redis": "ok"}}
        async with Client(ticketing_http, auth=token(settings)) as client:
            await client.call_tool("get_ticket", {"ticket_id": 999999}, raise_on_error=False)
        metrics = (await http.get("/metrics")).text
        assert (
            'supportmesh_tool_calls_total{outcome="not_found",server="ticketing",tool="get_ticket"}'
        ) in metrics
        assert "supportmesh_tool_seconds_bucket" in metrics
        assert "supportmesh_outbox_unsent" in metrics


async def test_http_refuses_foreign_host_and_origin(
    ticketing_http: str, settings: Settings
) -> None:
    headers = {
        "accept": "application/json, text/event-stream",
        "authorization": f"Bearer {token(settings)}",
    }
    async with httpx.AsyncClient() as http:
        ok = await http.post(ticketing_http, json=INITIALIZE, headers=headers)
        assert ok.status_code == 200
        bad_host = await http.post(
            ticketing_http, json=INITIALIZE, headers={**headers, "host": "evil.example.com"}
        )
        assert bad_host.status_code == 421
        bad_origin = await http.post(
            ticketing_http,
            json=INITIALIZE,
            headers={**headers, "origin": "http://evil.example.com"},
        )
        assert bad_origin.status_code == 403
