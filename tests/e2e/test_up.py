"""``supportmesh up`` on a fresh data directory with no configuration at all."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from clients.mesh import Mesh, read_mesh
from tests.conftest import STARTUP_SECONDS, SUPPORTMESH, inspector, stopped
from tests.integration.test_backends import wait_gone


@dataclass
class RunningUp:
    proc: subprocess.Popen[bytes]
    mesh: Mesh  # what it wrote to DATA_DIR/mesh.json once up
    log: Path
    env: dict[str, str]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[RunningUp]:
    """`supportmesh up --free-ports` in a subprocess, once it is up."""
    with running_up(tmp_path) as running:
        yield running


@contextlib.contextmanager
def running_up(tmp_path: Path, **settings: str) -> Iterator[RunningUp]:
    """`supportmesh up --free-ports` with these SUPPORTMESH_* ``settings``, once it is up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    data_dir = tmp_path / "data"
    env["SUPPORTMESH_DATA_DIR"] = str(data_dir)
    env["SUPPORTMESH_APPROVAL_SWEEP_SECONDS"] = "0.5"
    env |= {f"SUPPORTMESH_{name.upper()}": value for name, value in settings.items()}
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SUPPORTMESH, "up", "--free-ports"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    with stopped(proc):
        deadline = time.monotonic() + STARTUP_SECONDS
        while (mesh := read_mesh(data_dir)) is None or mesh.pid != proc.pid:
            assert proc.poll() is None, f"up exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not up in {STARTUP_SECONDS} s:\n{log.read_text()}"
            time.sleep(0.2)
        yield RunningUp(proc, mesh, log, env)
    assert proc.returncode == 0, log.read_text()
    assert read_mesh(data_dir) is None  # removed on the way out
    assert wait_gone(data_dir) == []


def issue(env: dict[str, str], role: str) -> str:
    """A token from `supportmesh token issue`, signed with the mesh's own key."""
    argv = [SUPPORTMESH, "token", "issue", "--role", role, "--subject", f"e2e-{role}"]
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout.strip()


async def short_approval(url: str, bearer: str) -> str:
    """An approval that expires in a second; its id."""
    async with Client(url, auth=bearer) as client:
        asked = await client.call_tool(
            "request_approval",
            {
                "subject": "order/#W9000001",
                "action_tool": "x",
                "reason": "r",
                "expires_in_seconds": 1,
            },
        )
    assert asked.structured_content
    return str(asked.structured_content["id"])


async def until_expired(url: str, bearer: str, approval_id: str, log: Path) -> None:
    """Wait (at most a minute) for the approvals sweep to record the approval as expired."""
    deadline = time.monotonic() + 60
    async with Client(url, auth=bearer) as client:
        while True:
            read = await client.call_tool("get_approval", {"approval_id": approval_id})
            assert read.structured_content
            if read.structured_content["decided_at"] is not None:  # set by the sweep
                return
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.5)


async def test_up_serves_every_server_on_embedded_backends(up: RunningUp) -> None:
    servers = up.mesh.servers
    assert set(servers) == {"ticketing", "crm", "knowledge", "analytics", "memory", "approvals"}
    printed = up.log.read_text()
    for name, url in servers.items():
        assert f"{name:<10} {url}" in printed
    assert '"mcpServers"' in printed and '"supportmesh-crm"' in printed
    assert "Loaded the demo store" in printed
    assert "Loaded the demo knowledge base" in printed
    bearer = issue(up.env, "agent")
    async with Client(servers["ticketing"], auth=bearer) as client:
        made = await client.call_tool("create_ticket", {"subject": "Hello", "description": "d"})
        assert made.structured_content and made.structured_content["status"] == "new"
    async with Client(servers["crm"], auth=bearer) as client:
        found = await client.call_tool("find_customer", {"email": "camila.souza@example.com"})
        assert found.structured_content == {"customer_id": "camila_souza_1459"}
    # Background work runs in up's one worker for every server, not only the first to start:
    # an approval past its expiry is recorded as expired by the approvals sweep.
    approval_id = await short_approval(servers["approvals"], bearer)
    await until_expired(servers["approvals"], bearer, approval_id, up.log)
    assert "unregistered task" not in up.log.read_text()
    # `supportmesh config ... --transport http`: every server reached as the file says
    done = subprocess.run(
        [SUPPORTMESH, "config", "vscode", "--transport", "http"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["servers"]
    assert {e["url"] for e in entries.values()} == set(servers.values())
    for entry in entries.values():
        assert entry["type"] == "http"
        async with Client(StreamableHttpTransport(entry["url"], headers=entry["headers"])) as c:
            assert await c.list_tools()
    up.proc.send_signal(signal.SIGINT)
    up.proc.wait(timeout=30)


async def test_up_handles_a_ticket_created_on_the_ticketing_server_with_no_one_calling_it(
    up: RunningUp,
) -> None:
    """A customer's ticket, created as Claude Desktop would (a tool call on the ticketing
    server), is handled by `up`'s orchestrator service: the order cancelled in the CRM, the
    ticket solved, its progress readable; `supportmesh handle` then finds nothing to do."""
    bearer = issue(up.env, "agent")
    async with Client(up.mesh.servers["ticketing"], auth=bearer) as client:
        made = await client.call_tool(
            "create_ticket",
            {
                "subject": "cancel my yoga mat",
                "description": "Hi, please cancel my order W5590865, I ordered it by mistake. "
                "Thanks, Camila",
                "customer_id": "camila_souza_1459",
            },
        )
        assert made.structured_content
        ticket_id = made.structured_content["id"]
    assert up.mesh.orchestrator is not None
    headers = {"Authorization": f"Bearer {bearer}"}
    async with httpx.AsyncClient(base_url=up.mesh.orchestrator, headers=headers) as http:
        deadline = time.monotonic() + STARTUP_SECONDS
        while (shown := await http.get(f"/tickets/{ticket_id}")).status_code != 200 or (
            shown.json()["status"] != "resolved"
        ):
            assert time.monotonic() < deadline, shown.text
            await asyncio.sleep(0.2)
        assert shown.json()["outcome"]["status"] == "done"
        assert [a["tool"] for a in shown.json()["plan"]["actions"]] == ["cancel_pending_order"]
        events = (await http.get(f"/tickets/{ticket_id}/events")).text
    for step in ("intake", "triage", "research", "solution", "act", "quality", "resolve"):
        assert f'"node": "{step}"' in events
    async with Client(up.mesh.servers["crm"], auth=bearer) as client:
        order = await client.call_tool("get_order", {"order_id": "#W5590865"})
        assert order.structured_content and order.structured_content["status"] == "cancelled"
    async with Client(up.mesh.servers["ticketing"], auth=bearer) as client:
        ticket = await client.call_tool("get_ticket", {"ticket_id": ticket_id})
        assert ticket.structured_content and ticket.structured_content["status"] == "solved"
    done = subprocess.run(
        [SUPPORTMESH, "handle", str(ticket_id)],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ticket {ticket_id} is already resolved" in done.stdout
    # The analytics server has counted it, from the events alone.
    async with Client(up.mesh.servers["analytics"], auth=bearer) as client:
        deadline = time.monotonic() + 60
        while True:
            volume = await client.call_tool("ticket_volume", {})
            assert volume.structured_content
            if volume.structured_content["totals"]["solved"] >= 1:
                break
            assert time.monotonic() < deadline, volume.structured_content
            await asyncio.sleep(0.5)
    up.proc.send_signal(signal.SIGINT)
    up.proc.wait(timeout=30)


async def test_with_the_servers_beats_off_one_supportmesh_beat_sends_the_periodic_tasks(
    tmp_path: Path,
) -> None:
    with running_up(tmp_path, beat_in_process="false") as up:
        url, bearer = up.mesh.servers["approvals"], issue(up.env, "agent")
        approval_id = await short_approval(url, bearer)
        await asyncio.sleep(3)  # six sweeps' time: nobody sweeps
        async with Client(url, auth=bearer) as client:
            read = await client.call_tool("get_approval", {"approval_id": approval_id})
        assert read.structured_content and read.structured_content["decided_at"] is None
        log = tmp_path / "beat.log"
        with log.open("wb") as out:  # on up's backends (its data directory), as a worker is
            beat = subprocess.Popen(
                [SUPPORTMESH, "beat"], env=up.env, stdout=out, stderr=subprocess.STDOUT
            )
        with stopped(beat):
            await until_expired(url, bearer, approval_id, log)
            beat.send_signal(signal.SIGTERM)
            assert beat.wait(timeout=30) == 0, log.read_text()[-3000:]
        printed = log.read_text()
        for task in (
            "approvals.expire_due every 0.5 s",
            "ticketing.scan_sla",
            "memory.consolidate_idle",
            "knowledge.resend_stale",
            "orchestrator.prune_checkpoints",
        ):
            assert task in printed, printed[-3000:]
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(timeout=30)


def test_up_names_a_port_in_use_and_exits(tmp_path: Path) -> None:
    """A taken port is a one-line error and exit code 3, not a traceback, and nothing is left
    running."""
    from servers.runtime.serve import listening_socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env["SUPPORTMESH_DATA_DIR"] = str(tmp_path / "data")
    with listening_socket("127.0.0.1", 0) as taken:
        offset = taken.getsockname()[1] - 8702  # crm's port
        done = subprocess.run(
            [SUPPORTMESH, "up", f"--port-offset={offset}", "--no-demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
        )
    assert done.returncode == 3, done.stderr
    assert f"crm cannot listen on 127.0.0.1:{offset + 8702}" in done.stderr
    assert "Traceback" not in done.stderr
    assert wait_gone(tmp_path / "data") == []


@pytest.mark.node
def test_inspector_cli_lists_and_calls_tools_on_up(up: RunningUp, node_tools: Path) -> None:
    bearer = issue(up.env, "agent")
    url = up.mesh.servers["ticketing"]
    listed = inspector(node_tools, url, bearer, "--method", "tools/list")
    assert len(listed["tools"]) == 6
    called = inspector(
        node_tools, url, bearer, "--method", "tools/call", "--tool-name", "search_tickets"
    )
    recalled = inspector(
        node_tools,
        up.mesh.servers["memory"],
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
        up.mesh.servers["approvals"],
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
        up.mesh.servers["approvals"],
        issue(up.env, "approver"),
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
    analytics = up.mesh.servers["analytics"]
    listed = inspector(node_tools, analytics, bearer, "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == {
        "ticket_volume",
        "resolution_times",
        "sla_breaches",
        "agent_actions",
        "approval_stats",
    }
    counted = inspector(
        node_tools,
        analytics,
        bearer,
        "--method",
        "tools/call",
        "--tool-name",
        "approval_stats",
        "--tool-arg",
        'bucket="hour"',
    )
    assert counted["structuredContent"]["bucket"] == "hour"
    up.proc.send_signal(signal.SIGTERM)
    up.proc.wait(timeout=30)
