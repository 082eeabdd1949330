"""``supportmesh demo`` on a fresh data directory with no configuration: every demo ticket ends
as the ticket set expects, the report's numbers are the analytics server's, and nothing is left
running."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from fastmcp import Client

from clients.demo import DemoReport, demo_tickets
from clients.mesh import read_mesh
from schemas.roles import Role
from servers.runtime.auth import issue_token
from servers.runtime.settings import Settings
from tests.conftest import STARTUP_SECONDS, SUPPORTMESH, stopped
from tests.integration.test_backends import wait_gone


async def test_demo_handles_every_ticket_and_reports_what_analytics_counted(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env["SUPPORTMESH_DATA_DIR"] = str(tmp_path)
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SUPPORTMESH, "demo", "--keep-running"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    demo_dir = tmp_path / "demo"
    with stopped(proc):
        deadline = time.monotonic() + STARTUP_SECONDS * 2
        while not (demo_dir / "report.html").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        report = DemoReport.model_validate_json((demo_dir / "report.json").read_text())
        expected = {t.id: t.expect.run for t in demo_tickets()}
        assert report.decision is not None, "no ticket waited for an approval"
        for line in report.tickets:
            approved = line.ticket_id == report.decision.ticket_id
            assert line.run == ("resolved" if approved else expected[line.demo_id]), line
            assert line.reply.startswith("Hello") and line.citations, line
        assert report.decision.decided_by == "lead@supportmesh.demo"

        # the numbers it printed are the analytics server's
        mesh = read_mesh(demo_dir)
        assert mesh is not None
        settings = Settings(data_dir=demo_dir)
        bearer = issue_token(settings, Role.AGENT, "test")
        async with Client(mesh.servers["analytics"], auth=bearer) as analytics:
            volume = (await analytics.call_tool("ticket_volume", {})).structured_content
            approvals = (await analytics.call_tool("approval_stats", {})).structured_content
        assert volume and approvals
        assert volume["totals"] == report.dashboard.tickets.model_dump()
        assert approvals["totals"] == report.dashboard.approvals.model_dump()
        assert report.dashboard.tickets.created == len(report.tickets)

        printed = log.read_text()
        assert f"{len(report.tickets)} tickets in" in printed
        assert str(demo_dir / "report.html") in printed
        page = (demo_dir / "report.html").read_text()
        assert page.count("<svg") >= 4 and "<script" not in page
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert read_mesh(demo_dir) is None
    assert wait_gone(demo_dir) == []
    assert json.loads((demo_dir / "report.json").read_text())["tickets"]
