"""``supportmesh config``: what it prints is each client's configuration file, and every
command it names starts a server that answers over stdio."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from clients.registry import SERVERS
from servers.runtime.settings import Settings
from tests.conftest import SUPPORTMESH, supportmesh_env


def printed(client: str, env: dict[str, str], *options: str) -> dict[str, Any]:
    done = subprocess.run(
        [SUPPORTMESH, "config", client, *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


async def test_every_server_a_printed_config_names_starts_and_answers_over_stdio(
    settings: Settings, tmp_path: Path
) -> None:
    # a data directory of its own: the knowledge server's local vector store admits one process
    env = supportmesh_env(settings) | {"SUPPORTMESH_DATA_DIR": str(tmp_path)}
    claude = printed("claude-desktop", env)["mcpServers"]
    cursor = printed("cursor", env)["mcpServers"]
    vscode = printed("vscode", env)["servers"]
    assert set(claude) == {f"supportmesh-{name}" for name in SERVERS}
    assert cursor == claude
    assert vscode == {name: {"type": "stdio", **entry} for name, entry in claude.items()}
    for name, entry in claude.items():
        assert entry["env"]["SUPPORTMESH_DATA_DIR"] == str(tmp_path)
        # what a client passes: the config's variables, and where to find programs
        started = {"PATH": os.environ["PATH"], **entry["env"]}
        transport = StdioTransport(entry["command"], entry["args"], env=started)
        async with Client(transport, timeout=120) as client:
            assert await client.list_tools(), name


def test_an_unknown_client_is_refused_naming_the_choices(settings: Settings) -> None:
    done = subprocess.run(
        [SUPPORTMESH, "config", "emacs"],
        env=supportmesh_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "claude-desktop, cursor, vscode" in done.stderr
