"""Input an attacker sends, one defect at a time: each answered with a typed error naming the
field, never an internal error or HTTP 500, and nothing written.

The transport limits (``servers/runtime/limits.py``) are checked over real streamable HTTP and
stdio; the tools' own refusals through an in-process client. ``test_fuzz.py`` tries the same
classes at random on every tool.
"""

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError

from schemas.common import MAX_JSON_BYTES, MAX_JSON_DEPTH
from servers.runtime import telemetry
from servers.runtime.limits import MAX_MESSAGE_DEPTH
from servers.runtime.serve import new_server
from servers.runtime.settings import Settings
from tests.conftest import STARTUP_SECONDS, SUPPORTMESH, supportmesh_env, token
from tests.integration.test_ticketing_tools import Db, call, refused, snapshot
from tests.integration.test_transports import INITIALIZE

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
REQUEST = {"subject": "order/#W1", "action_tool": "crm.cancel_pending_order", "reason": "r"}


def tool_call(name: str, arguments_json: str) -> bytes:
    """A tools/call body whose arguments are JSON text as given (tokens json.dumps won't write)."""
    params = f'{{"name":"{name}","arguments":{arguments_json}}}'
    return f'{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{params}}}'.encode()


def with_argument(name: str, token_text: str) -> str:
    """The approval request's arguments with ``name`` set to the JSON text ``token_text``."""
    return json.dumps(REQUEST)[:-1] + f', "{name}": {token_text}}}'


async def post(url: str, bearer: str, body: bytes) -> httpx.Response:
    headers = HEADERS | {"authorization": f"Bearer {bearer}"}
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(url, content=body, headers=headers)


def tool_error(answer: httpx.Response) -> str:
    """The text of a tool error that came back as a JSON-RPC result."""
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["isError"] is True, result
    text: str = result["content"][0]["text"]
    return text


async def approvals_rows(db: Db) -> int:
    row = await (await db.execute("SELECT count(*) FROM approvals.approvals")).fetchone()
    assert row is not None
    return int(row[0])


# --- numbers JSON cannot carry faithfully -----------------------------------------------------


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])
async def test_a_non_finite_amount_is_refused_not_stored_as_null(
    approvals_http: str, settings: Settings, db: Db, number: str
) -> None:
    before = await approvals_rows(db)
    answer = await post(
        approvals_http,
        token(settings),
        tool_call("request_approval", with_argument("amount", number)),
    )
    assert tool_error(answer).startswith("invalid_argument: amount: must be a finite number")
    assert await approvals_rows(db) == before


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9" * 5000, "integer out of range"),  # past int()'s 4,300 digits: was HTTP 500
        ("9" * 330, "integer out of range"),
        (str(2**63), "integer out of range"),
    ],
)
async def test_integers_past_64_bits_are_refused_by_field(
    approvals_http: str, settings: Settings, text: str, reason: str
) -> None:
    body = tool_call("request_approval", with_argument("expires_in_seconds", text))
    answer = await post(approvals_http, token(settings), body)
    assert tool_error(answer).startswith(f"invalid_argument: expires_in_seconds: {reason}")


# --- text PostgreSQL cannot store -------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ('{"a\\u0000b": 1}', "action_arguments.a\\x00b: key: text must not contain NUL"),
        ('{"\\ud800": 1}', "action_arguments.\\ud800: key: text must be valid Unicode"),
        ('{"k": "\\udfff"}', "action_arguments.k: text must be valid Unicode"),
    ],
)
async def test_nul_and_lone_surrogates_are_refused_by_field(
    approvals_http: str, settings: Settings, db: Db, arguments: str, field: str
) -> None:
    before = await approvals_rows(db)
    body = tool_call("request_approval", with_argument("action_arguments", arguments))
    answer = await post(approvals_http, token(settings), body)
    assert tool_error(answer).startswith(f"invalid_argument: {field}")
    assert await approvals_rows(db) == before


# --- nesting and size --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 10_000])
async def test_json_nested_past_the_limit_is_a_typed_json_rpc_error(
    approvals_http: str, settings: Settings, depth: int
) -> None:
    """Deep bodies made our scope check hit RecursionError (HTTP 500) and the SDK answer -32602
    naming nothing; both are refused before either runs."""
    deep = "[" * depth + "]" * depth
    body = tool_call("request_approval", with_argument("action_arguments", deep))
    answer = await post(approvals_http, token(settings), body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == -32600
    assert (
        error["message"] == f"invalid_argument: body: nested deeper than {MAX_MESSAGE_DEPTH} levels"
    )
    assert error["data"] == {"code": "invalid_argument", "field": "body"}


async def test_a_body_past_the_size_limit_is_413(approvals_http: str, settings: Settings) -> None:
    huge = json.dumps("x" * (settings.max_message_bytes + 1))
    body = tool_call("request_approval", with_argument("reason", huge))
    answer = await post(approvals_http, token(settings), body)
    assert answer.status_code == 413
    assert answer.json()["error"]["message"].startswith("invalid_argument: body: larger than")


async def test_free_form_arguments_are_bounded_and_the_queue_stays_readable(
    approvals: Client[Any], approvals_http: str, settings: Settings, db: Db
) -> None:
    """Arguments nested 250 deep once broke every page of the approver's queue (HTTP 500)."""

    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {"leaf": 1}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    before = await approvals_rows(db)
    too_deep = await refused(
        approvals, "request_approval", **REQUEST, action_arguments=nested(MAX_JSON_DEPTH + 1)
    )
    assert too_deep == (
        f"invalid_argument: action_arguments: nested deeper than {MAX_JSON_DEPTH} levels"
    )
    too_big = await refused(
        approvals, "request_approval", **REQUEST, action_arguments={"x": "y" * MAX_JSON_BYTES}
    )
    assert too_big.startswith("invalid_argument: action_arguments: larger than")
    assert await approvals_rows(db) == before
    deepest = await call(
        approvals, "request_approval", **REQUEST, action_arguments=nested(MAX_JSON_DEPTH)
    )
    page = json.dumps({"limit": 200})
    answer = await post(approvals_http, token(settings), tool_call("list_pending_approvals", page))
    listed = answer.json()["result"]["structuredContent"]["approvals"]
    assert deepest["id"] in [approval["id"] for approval in listed]


# --- lax coercion ------------------------------------------------------------------------------


async def test_json_types_are_the_contract(ticketing: Client[Any], db: Db) -> None:
    """`true` once closed ticket #1 and "12" passed for a ticket number."""
    before = await snapshot(db)
    for wrong in (True, "12", 12.0):
        message = await refused(ticketing, "close_ticket", ticket_id=wrong)
        assert message == "invalid_argument: ticket_id: Input should be a valid integer"
    message = await refused(ticketing, "add_comment", ticket_id=1, body="b", public="yes")
    assert message == "invalid_argument: public: Input should be a valid boolean"
    message = await refused(ticketing, "search_tickets", created_after=1_700_000_000)
    assert message == "invalid_argument: created_after: must be an ISO 8601 date-time string"
    assert await snapshot(db) == before


# --- forged cursors ----------------------------------------------------------------------------


def forged(key: str) -> str:
    return base64.urlsafe_b64encode(f'{{"k": {key}, "q": "0"}}'.encode()).decode()


@pytest.mark.parametrize(
    ("tool", "arguments", "key"),
    [
        ("search_tickets", {"text": "card"}, "[Infinity, 1]"),
        ("search_tickets", {"text": "card"}, "[1e400, 1]"),
        ("search_tickets", {"text": "card"}, f"[{'9' * 330}, 1]"),
        ("search_tickets", {}, f'["2026-01-01T00:00:00+00:00", {"9" * 30}]'),
        ("list_pending_approvals", {}, '["2026-01-01T00:00:00+00:00", "apr\\u0000"]'),
        ("list_articles", {}, '["a\\u0000"]'),
        ("list_memories", {"customer_id": "c"}, '["2026-01-01T00:00:00+00:00", "\\ud800"]'),
    ],
)
async def test_a_forged_cursor_is_invalid_argument(
    ticketing: Client[Any],
    approvals: Client[Any],
    knowledge: Client[Any],
    memory: Client[Any],
    tool: str,
    arguments: dict[str, Any],
    key: str,
) -> None:
    client = {
        "search_tickets": ticketing,
        "list_pending_approvals": approvals,
        "list_articles": knowledge,
        "list_memories": memory,
    }[tool]
    message = await refused(client, tool, **arguments, cursor=forged(key))
    assert message == f"invalid_argument: cursor: not a cursor returned by {tool}"


# --- stdio -------------------------------------------------------------------------------------


async def test_stdio_refuses_what_http_refuses(settings: Settings) -> None:
    """The same limits on the stdio transport: a NaN amount is refused by field (the SDK would
    have passed it on as null). And SIGTERM stops the server while its client holds stdin."""
    proc = await asyncio.create_subprocess_exec(
        SUPPORTMESH,
        *("serve", "approvals", "--transport", "stdio"),
        env=supportmesh_env(settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin and proc.stdout
    lines = [
        json.dumps(INITIALIZE).encode(),
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        tool_call("request_approval", with_argument("amount", "NaN")),
    ]
    try:
        proc.stdin.write(b"\n".join(lines) + b"\n")
        await proc.stdin.drain()
        answers: dict[int, Any] = {}
        while 3 not in answers:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=STARTUP_SECONDS)
            assert line, "the server closed stdout"
            message = json.loads(line)
            answers[message.get("id", -1)] = message
    finally:
        proc.terminate()  # with stdin still open: a server blocked reading it once ignored this
        await asyncio.wait_for(proc.wait(), timeout=30)
    result = answers[3]["result"]
    assert result["isError"] is True
    assert result["content"][0]["text"].startswith("invalid_argument: amount: must be a finite")


# --- errors we did not foresee -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _no_lifespan(_: FastMCP[Any]) -> AsyncIterator[None]:
    yield


async def test_an_internal_error_is_counted_as_internal_and_expected_ones_log_below_error(
    settings: Settings, ticketing: Client[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = new_server("broken", "", _no_lifespan, settings)

    @server.tool
    async def explode() -> str:
        """Fails as a bug would."""
        raise psycopg.errors.NumericValueOutOfRange("bigint out of range")

    internal = telemetry.TOOL_CALLS.labels("broken", "explode", "internal")
    counted = internal._value.get()
    async with Client(server) as client:
        with pytest.raises(ToolError, match=r"^Error calling tool 'explode'$"):
            await client.call_tool("explode", {})
    assert internal._value.get() == counted + 1

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert (await refused(ticketing, "get_ticket", ticket_id=10**12)).startswith("not_found")
    assert caplog.records and all(r.levelno < logging.ERROR for r in caplog.records)
