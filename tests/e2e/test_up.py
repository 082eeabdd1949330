"""``supportmesh up`` on a fresh data directory with no configuration at all."""

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from servers.runtime.backends import free_port
from tests.conftest import SUPPORTMESH, inspector, running
from tests.integration.test_backends import wait_gone


@pytest.fixture
def mesh(tmp_path: Path) -> Any:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env["SUPPORTMESH_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "up.log"
    argv = [SUPPORTMESH, "up", f"--port-offset={port - 8701}"]
    with running(argv, env, f"http://127.0.0.1:{port}/readyz", log) as proc:
        yield proc, f"http://127.0.0.1:{port}/mcp", log
    assert proc.returncode == 0, log.read_text()
    assert wait_gone(tmp_path / "data") == []


async def test_up_serves_ticketing_on_embedded_backends(mesh: Any) -> None:
    proc, url, log = mesh
    printed = log.read_text()
    assert f"ticketing  {url}" in printed
    assert '"mcpServers"' in printed and '"supportmesh-ticketing"' in printed
    async with Client(url) as client:
        made = await client.call_tool("create_ticket", {"subject": "Hello", "description": "d"})
        assert made.structured_content and made.structured_content["status"] == "new"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


@pytest.mark.node
def test_inspector_cli_lists_and_calls_tools_on_up(mesh: Any, node_tools: Path) -> None:
    proc, url, _ = mesh
    listed = inspector(node_tools, url, "--method", "tools/list")
    assert len(listed["tools"]) == 6
    called = inspector(node_tools, url, "--method", "tools/call", "--tool-name", "search_tickets")
    assert called["structuredContent"]["tickets"] == []
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
