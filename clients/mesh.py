"""Running servers: ``supportmesh serve`` (one) and ``supportmesh up`` (the whole mesh).

``up`` binds every server's port before it serves (so a port, given or free, cannot be taken
between choosing and listening), then writes what it serves to ``DATA_DIR/mesh.json``: the
file scripts and tests read for the actual URLs. It is removed when ``up`` stops.
"""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from clients.demo_data import DemoData
from clients.registry import SERVERS
from servers.runtime.backends import qdrant_location
from servers.runtime.serve import http_app, listening_socket, serving_http
from servers.runtime.settings import Settings
from servers.runtime.tasks import work_here

MESH_FILE = "mesh.json"
ORCHESTRATOR_PORT = 8700


class Mesh(BaseModel):
    """What ``DATA_DIR/mesh.json`` records while ``supportmesh up`` runs."""

    pid: int
    servers: dict[str, str]  # name -> MCP URL
    orchestrator: str | None = None  # the orchestrator service's base URL
    backends: dict[str, str]  # SUPPORTMESH_* variables that reach the same backends


class PortInUse(Exception):
    """A server's port is taken by another process."""


def backend_env(settings: Settings) -> dict[str, str]:
    """The ``SUPPORTMESH_*`` variables that point another process at these backends."""
    env = {
        "SUPPORTMESH_POSTGRES_URL": settings.postgres_url or "",
        "SUPPORTMESH_REDIS_URL": settings.redis_url or "",
        "SUPPORTMESH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "SUPPORTMESH_DATA_DIR": str(settings.data_dir.resolve()),
    }
    if settings.qdrant_url:
        env["SUPPORTMESH_QDRANT_URL"] = settings.qdrant_url
    if settings.kafka_record_per_batch:  # the embedded Tansu broker needs it (see settings)
        env["SUPPORTMESH_KAFKA_RECORD_PER_BATCH"] = "true"
    return env


class McpClient(StrEnum):
    """The MCP clients ``supportmesh config`` writes a configuration for."""

    CLAUDE_DESKTOP = "claude-desktop"
    CURSOR = "cursor"
    VSCODE = "vscode"


def _command() -> str:
    return shutil.which("supportmesh") or str(Path(sys.executable).parent / "supportmesh")


def stdio_env(settings: Settings) -> dict[str, str]:
    """What a stdio server started by a client needs to reach the same backends: the data
    directory (whose running engines it shares) and every backend URL that is set."""
    return {k: v for k, v in backend_env(settings).items() if v}


def client_config(
    client: McpClient,
    settings: Settings,
    urls: dict[str, str] | None = None,
    bearer: str | None = None,
) -> dict[str, Any]:
    """Every server, as ``client``'s configuration file declares MCP servers: run over stdio
    on ``settings``' backends, or, given ``urls``, reached over streamable HTTP with
    ``bearer``. Claude Desktop's file (``claude_desktop_config.json``) and Cursor's
    (``.cursor/mcp.json``) use ``mcpServers``; VS Code's (``.vscode/mcp.json``) ``servers``
    with a ``type``."""
    entries: dict[str, Any] = {}
    for name in SERVERS:
        if urls is None:
            entry: dict[str, Any] = {
                "command": _command(),
                "args": ["serve", name, "--transport", "stdio"],
                "env": stdio_env(settings),
            }
        else:
            entry = {"url": urls[name], "headers": {"Authorization": f"Bearer {bearer}"}}
        if client is McpClient.VSCODE:
            entry = {"type": "stdio" if urls is None else "http", **entry}
        entries[f"supportmesh-{name}"] = entry
    return {"servers" if client is McpClient.VSCODE else "mcpServers": entries}


def read_mesh(data_dir: Path) -> Mesh | None:
    """What a running ``supportmesh up`` in ``data_dir`` serves, or None if none runs."""
    try:
        return Mesh.model_validate_json((data_dir / MESH_FILE).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _mesh_file(settings: Settings, urls: dict[str, str], service: str) -> Iterator[None]:
    path = settings.data_dir.resolve() / MESH_FILE
    mesh = Mesh(pid=os.getpid(), servers=urls, orchestrator=service, backends=backend_env(settings))
    partial = path.with_suffix(".partial")
    # 0600: the backend URLs may hold passwords, as the signing key beside it does.
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(mesh.model_dump_json(indent=2))
    partial.replace(path)  # readers see the whole file or none
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _listen(name: str, host: str, port: int) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise PortInUse(
            f"{name} cannot listen on {host}:{port} ({exc.strerror}); stop what holds it, or "
            "choose other ports (--port, --port-offset N, --free-ports)"
        ) from exc


@contextlib.asynccontextmanager
async def _serving(
    server: Any, settings: Settings, needs: tuple[str, ...], host: str, sock: socket.socket
) -> AsyncIterator[str]:
    """Serve ``server`` on HTTP on ``sock`` until the block exits; yields its MCP URL."""
    base_url = f"http://{host}:{sock.getsockname()[1]}"  # its OAuth metadata names it
    async with serving_http(http_app(server, settings, needs, base_url), sock):
        yield f"{base_url}/mcp"


async def serve_http(
    server: Any, settings: Settings, host: str, port: int, needs: tuple[str, ...]
) -> None:
    """Serve one server on streamable HTTP until cancelled."""
    sock = _listen(server.name, host, port)
    async with _serving(server, settings, needs, host, sock) as url:
        # One write, newline included: print() writes the newline apart, and a log line from
        # the worker's threads (redelivered tasks start at once) could land in between.
        sys.stderr.write(f"{server.name}: {url}\n")
        sys.stderr.flush()
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def serving_orchestrator(
    settings: Settings, urls: dict[str, str], sock: socket.socket
) -> AsyncIterator[str]:
    """The orchestrator service on ``sock``, reaching the servers at ``urls``, until the block
    exits; yields its base URL."""
    from orchestrator.service import service_app

    host, port = sock.getsockname()[:2]
    async with serving_http(service_app(settings, urls), sock):
        yield f"http://{host}:{port}"


async def serve_orchestrator(
    settings: Settings, host: str, port: int, urls: dict[str, str]
) -> None:
    """Serve the orchestrator service until cancelled."""
    sock = _listen("orchestrator", host, port)
    async with serving_orchestrator(settings, urls, sock) as url:
        sys.stderr.write(f"orchestrator: {url}\n")  # one write, as serve_http's
        sys.stderr.flush()
        await asyncio.Event().wait()


async def run_up(
    settings: Settings,
    host: str,
    port_offset: int | None,
    started: float,
    demo: DemoData | None = None,
) -> None:
    """Serve every server on HTTP, and the orchestrator service, until cancelled: on its own
    port plus ``port_offset``, or on free ports when ``port_offset`` is None. ``demo``: load
    that demo set's knowledge base into an empty knowledge server first."""
    import orchestrator.tasks  # noqa: F401  (registered before the worker starts)

    urls: dict[str, str] = {}
    # One Celery worker in this process runs every server's tasks, and the orchestrator's.
    work_here(*SERVERS, "orchestrator", "notifications")
    # Every server is built (its tasks imported) before the first one starts that worker: a
    # task registered after the worker started is one it refuses as unregistered.
    servers = {name: entry.module.build_server(settings) for name, entry in SERVERS.items()}
    async with contextlib.AsyncExitStack() as stack:
        for name, entry in SERVERS.items():
            port = 0 if port_offset is None else entry.port + port_offset
            sock = _listen(name, host, port)
            serving = _serving(servers[name], settings, entry.needs, host, sock)
            urls[name] = await stack.enter_async_context(serving)
        if demo:
            await _load_demo_articles(settings, urls["knowledge"], demo)
        port = 0 if port_offset is None else ORCHESTRATOR_PORT + port_offset
        sock = _listen("orchestrator", host, port)
        service = await stack.enter_async_context(serving_orchestrator(settings, urls, sock))
        await _until_ready(service)  # the servers are; "up" means every /readyz is green
        stack.enter_context(_mesh_file(settings, urls, service))
        _print_mesh(settings, urls, service, time.monotonic() - started)
        await asyncio.Event().wait()


async def _until_ready(url: str, seconds: float = 60) -> None:
    """Wait until the orchestrator service at ``url`` is ready (its consumer holds its
    partitions), for at most ``seconds``; after that it is reported as it is, not waited for."""
    import httpx

    from clients.orchestrator import OrchestratorClient

    deadline = time.monotonic() + seconds
    async with OrchestratorClient(url, timeout=5) as service:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if await service.ready():
                    return
            await asyncio.sleep(0.1)
    print(f"supportmesh up: {url}/readyz is not green yet; see it for why", file=sys.stderr)


async def _load_demo_articles(settings: Settings, url: str, demo: DemoData) -> None:
    from fastmcp import Client
    from rich.console import Console

    from clients.kb import load_demo_articles
    from schemas.roles import Role
    from servers.runtime.auth import issue_token

    bearer = issue_token(settings, Role.ADMIN, "supportmesh-up", ttl_seconds=3600)
    async with Client(url, auth=bearer) as client:
        await load_demo_articles(client, Console(stderr=True), demo)


def _print_mesh(settings: Settings, urls: dict[str, str], service: str, seconds: float) -> None:
    lines = [f"SupportMesh is up in {seconds:.1f} s.", "", "MCP servers (streamable HTTP):"]
    lines += [f"  {name:<10} {url}" for name, url in urls.items()]
    lines += [
        "",
        f"Orchestrator service: {service}  (handles every new ticket; POST /tickets, "
        "GET /tickets/ID, GET /tickets/ID/events)",
    ]
    lines += [
        f"  (also in {settings.data_dir.resolve() / MESH_FILE} while up runs)",
        "",
        "Backends:",
        f"  postgres   {settings.postgres_url}",
        f"  redis      {settings.redis_url}",
        f"  kafka      {settings.kafka_bootstrap}",
        f"  qdrant     {qdrant_location(settings)}",
        "",
        "Every HTTP call needs a bearer token; mint one and try it:",
        "  TOKEN=$(supportmesh token issue --role agent --subject you@example.com)",
        "  npx @modelcontextprotocol/inspector --cli "
        f"{next(iter(urls.values()))} --transport http "
        '--header "Authorization: Bearer $TOKEN" --method tools/list',
        "",
        "Claude Desktop (claude_desktop_config.json) - stdio servers on these backends:",
        json.dumps(client_config(McpClient.CLAUDE_DESKTOP, settings), indent=2),
        "(supportmesh config cursor|vscode [--transport http] prints the others' files)",
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
