"""Hostile input on what was added after the tools: time windows, resources, prompts and
completions. Each answered with a typed error naming what was wrong (on MCP's documented
JSON-RPC codes where it is not a tool call), never an internal error, and nothing written.

``test_hostile_input.py`` does the same for the tools' arguments and the transports;
``test_fuzz.py`` tries these classes at random on every resource template and prompt.
"""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import mcp.types as mt
import pytest
from fastmcp import Client
from mcp.shared.exceptions import McpError

from servers.runtime.settings import Settings
from tests.conftest import token
from tests.integration.test_hostile_input import HEADERS
from tests.integration.test_ticketing_tools import refused

RESOURCE_NOT_FOUND = -32002  # MCP's code for a resource that is not there
INVALID_PARAMS = mt.INVALID_PARAMS

# Offsets that move a bound past the calendar's ends once it is put in UTC (OverflowError).
EDGES = ["9999-12-31T23:59:59.999999-23:59", "0001-01-01T00:00:00+23:59"]
REPORTS = ["ticket_volume", "resolution_times", "sla_breaches", "agent_actions", "approval_stats"]


@pytest.fixture
async def analytics(analytics_http: str, settings: Settings) -> AsyncIterator[Client[Any]]:
    async with Client(analytics_http, auth=token(settings)) as client:
        yield client


@pytest.fixture
def servers(
    ticketing: Client[Any],
    crm: Client[Any],
    knowledge: Client[Any],
    memory: Client[Any],
    approvals: Client[Any],
) -> dict[str, Client[Any]]:
    """In-process clients by server (async fixtures cannot be asked for inside a test)."""
    return {
        "ticketing": ticketing,
        "crm": crm,
        "knowledge": knowledge,
        "memory": memory,
        "approvals": approvals,
    }


async def rpc_error(call: Any) -> mt.ErrorData:
    with pytest.raises(McpError) as raised:
        await call
    return raised.value.error


# --- time windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("report", REPORTS)
@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize("edge", EDGES)
async def test_a_window_bound_past_the_calendar_is_refused_by_field(
    analytics: Client[Any], report: str, field: str, edge: str
) -> None:
    """Offsets near year 1 and 9999 overflowed in UTC: a generic error on all five reports."""
    message = await refused(analytics, report, **{field: edge})
    assert message.startswith(f"invalid_argument: {field}: "), message


@pytest.mark.parametrize("report", REPORTS)
async def test_a_window_whose_default_start_falls_before_the_calendar_names_until(
    analytics: Client[Any], report: str
) -> None:
    message = await refused(analytics, report, until="0001-01-01T00:00:00Z")
    assert message.startswith("invalid_argument: until: "), message


@pytest.mark.parametrize("field", ["created_after", "created_before"])
async def test_ticket_search_refuses_a_bound_past_the_calendar(
    ticketing: Client[Any], field: str
) -> None:
    for edge in EDGES:
        message = await refused(ticketing, "search_tickets", **{field: edge})
        assert message.startswith(f"invalid_argument: {field}: "), message


# --- resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "uri", "field", "reason"),
    [
        ("ticketing", "tickets://²", "ticket_id", "a ticket number from 1"),
        ("ticketing", "tickets://" + "9" * 5000, "ticket_id", "at most 200 characters"),
        ("ticketing", "tickets://" + "9" * 30, "ticket_id", "a ticket number from 1"),
        ("ticketing", "tickets://0", "ticket_id", "a ticket number from 1"),
        ("crm", "crm://customers/%41%00", "customer_id", "text must not contain NUL"),
        ("knowledge", "kb://articles/a%00", "article_id", "text must not contain NUL"),
        ("memory", "memory://customers/%00", "customer_id", "text must not contain NUL"),
        ("approvals", "approvals://apr%00x", "approval_id", "text must not contain NUL"),
        ("crm", "crm://customers/" + "x" * 5000, "customer_id", "at most"),
    ],
)
async def test_a_bad_resource_id_is_invalid_params_naming_it(
    servers: dict[str, Client[Any]], server: str, uri: str, field: str, reason: str
) -> None:
    """'²' and 5,000 digits reached int(); a NUL reached PostgreSQL (psycopg.DataError)."""
    client = servers[server]
    error = await rpc_error(client.read_resource(uri))
    assert error.code == INVALID_PARAMS, error
    assert error.message.startswith(f"invalid_argument: {field}: "), error.message
    assert reason in error.message
    assert error.data == {"code": "invalid_argument", "field": field}


@pytest.mark.parametrize(
    ("server", "uri", "field"),
    [
        ("ticketing", "tickets://999999999", "ticket_id"),
        ("crm", "crm://customers/nobody_here", "customer_id"),
        ("knowledge", "kb://articles/no-such-article", "article_id"),
        ("approvals", "approvals://apr_nothing", "approval_id"),
        ("ticketing", "nowhere://at/all", "uri"),
    ],
)
async def test_a_resource_that_is_not_there_is_mcps_resource_not_found(
    servers: dict[str, Client[Any]], server: str, uri: str, field: str
) -> None:
    client = servers[server]
    error = await rpc_error(client.read_resource(uri))
    assert error.code == RESOURCE_NOT_FOUND, error
    assert error.message.startswith(f"not_found: {field}: "), error.message


# --- prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "prompt", "arguments", "expected"),
    [
        ("ticketing", "summarize-ticket", {"ticket_id": "²"}, "invalid_argument: ticket_id: "),
        ("ticketing", "summarize-ticket", {"ticket_id": "9" * 5000}, "invalid_argument: ticket_id"),
        ("ticketing", "summarize-ticket", {}, "invalid_argument: ticket_id: required"),
        (
            "ticketing",
            "summarize-ticket",
            {"ticket_id": "1", "tone": "x"},
            "invalid_argument: tone: not an argument of this prompt",
        ),
        ("ticketing", "summarize-ticket", {"ticket_id": "a\x00"}, "invalid_argument: ticket_id: "),
        ("knowledge", "answer-with-citations", {}, "invalid_argument: question: required"),
        (
            "knowledge",
            "answer-with-citations",
            {"question": "q" * 30_000},
            "invalid_argument: question: at most",
        ),
        ("ticketing", "no-such-prompt", {}, "not_found: name: "),
    ],
)
async def test_a_bad_prompt_request_is_invalid_params_naming_the_argument(
    servers: dict[str, Client[Any]],
    server: str,
    prompt: str,
    arguments: dict[str, str],
    expected: str,
) -> None:
    """A missing argument answered a generic 'Error rendering prompt', an unknown prompt
    JSON-RPC code 0, and summarize-ticket leaked int()'s 'invalid literal'."""
    client = servers[server]
    error = await rpc_error(client.get_prompt(prompt, arguments))
    assert error.code == INVALID_PARAMS, error
    assert error.message.startswith(expected), error.message


async def test_a_prompt_argument_over_http_is_named_as_it_is_for_a_tool(
    ticketing_http: str, settings: Settings
) -> None:
    """The transport's own check (a NUL in the JSON) names the argument, not params.arguments."""
    body = (
        '{"jsonrpc":"2.0","id":5,"method":"prompts/get",'
        '"params":{"name":"summarize-ticket","arguments":{"ticket_id":"1\\u0000"}}}'
    )
    headers = HEADERS | {"authorization": f"Bearer {token(settings)}"}
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(ticketing_http, content=body.encode(), headers=headers)
    error = answer.json()["error"]
    assert error["code"] == INVALID_PARAMS, error
    assert error["message"].startswith("invalid_argument: ticket_id: text must not contain NUL")
    assert answer.json()["id"] == 5


# --- completions -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["a\x00", "x" * 5000])
async def test_a_bad_completion_prefix_is_invalid_params(crm: Client[Any], prefix: str) -> None:
    ref = mt.ResourceTemplateReference(type="ref/resource", uri="crm://customers/{customer_id}")
    error = await rpc_error(crm.complete(ref, {"name": "customer_id", "value": prefix}))
    assert error.code == INVALID_PARAMS, error
    assert error.message.startswith("invalid_argument: customer_id: "), error.message
