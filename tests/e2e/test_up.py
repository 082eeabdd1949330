"""``supportmesh up`` on a fresh data directory with no configuration at all."""

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from servers.runtime.backends import free_port
from tests.conftest import SUPPORTMESH, inspector, running
from tests.integration.test_backends import wait_gone


def crm_port(ticketing_url: str) -> int:
    """The CRM's port under `up`: one above ticketing's (8701, 8702, ...)."""
    return int(ticketing_url.rsplit(":", 1)[1].split("/")[0]) + 1


@pytest.fixture
def mesh(tmp_path: Path) -> Any:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env["SUPPORTMESH_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "up.log"
    argv = [SUPPORTMESH, "up", f"--port-offset={port - 8701}"]
    with running(argv, env, f"http://127.0.0.1:{port}/readyz", log) as proc:
        yield proc, f"http://127.0.0.1:{port}/mcp", log, env
    assert proc.returncode == 0, log.read_text()
    assert wait_gone(tmp_path / "data") == []


def issue(env: dict[str, str], role: str) -> str:
    """A token from `supportmesh token issue`, signed with the mesh's own key."""
    argv = [SUPPORTMESH, "token", "issue", "--role", role, "--subject", f"e2e-{role}"]
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout.strip()


async def test_up_serves_every_server_on_embedded_backends(mesh: Any) -> None:
    proc, url, log, env = mesh
    deadline = time.monotonic() + 60
    while "SupportMesh is up" not in (printed := log.read_text()):  # after every server started
        assert time.monotonic() < deadline and proc.poll() is None, printed
        time.sleep(0.2)
    crm_url = f"http://127.0.0.1:{crm_port(url)}/mcp"
    assert f"ticketing  {url}" in printed and f"crm        {crm_url}" in printed
    assert '"mcpServers"' in printed and '"supportmesh-crm"' in printed
    assert "Loaded the demo store" in printed
    bearer = issue(env, "agent")
    async with Client(url, auth=bearer) as client:
        made = await client.call_tool("create_ticket", {"subject": "Hello", "description": "d"})
        assert made.structured_content and made.structured_content["status"] == "new"
    async with Client(crm_url, auth=bearer) as client:
        found = await client.call_tool("find_customer", {"email": "ada.quill@example.org"})
        assert found.structured_content == {"customer_id": "ada_quill_1001"}
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


@pytest.mark.node
def test_inspector_cli_lists_and_calls_tools_on_up(mesh: Any, node_tools: Path) -> None:
    proc, url, _, env = mesh
    bearer = issue(env, "agent")
    listed = inspector(node_tools, url, bearer, "--method", "tools/list")
    assert len(listed["tools"]) == 6
    called = inspector(
        node_tools, url, bearer, "--method", "tools/call", "--tool-name", "search_tickets"
    )
    # Memory (8705) and approvals (8706) too, each with the token its tools need.
    ticketing_port = crm_port(url) - 1
    memory_url = url.replace(str(ticketing_port), str(ticketing_port + 4))
    approvals_url = url.replace(str(ticketing_port), str(ticketing_port + 5))
    recalled = inspector(
        node_tools,
        memory_url,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "recall",
        "--tool-arg",
        'customer_id="ada_quill_1001"',
        "--tool-arg",
        'query="email"',
    )
    assert recalled["structuredContent"] == {"customer_id": "ada_quill_1001", "hits": []}
    asked = inspector(
        node_tools,
        approvals_url,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "request_approval",
        "--tool-arg",
        'subject="order/#W9000001"',
        "--tool-arg",
        'action_tool="crm.cancel_pending_order"',
        "--tool-arg",
        'reason="twice"',
    )["structuredContent"]
    decided = inspector(
        node_tools,
        approvals_url,
        issue(env, "approver"),
        "--method",
        "tools/call",
        "--tool-name",
        "decide_approval",
        "--tool-arg",
        f'approval_id="{asked["id"]}"',
        "--tool-arg",
        'decision="approve"',
    )["structuredContent"]
    assert (decided["status"], decided["decided_by"]) == ("approved", "e2e-approver")
    assert called["structuredContent"]["tickets"] == []
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
