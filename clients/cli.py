"""The ``supportmesh`` command line (Typer).

    supportmesh up                          every server on HTTP, on embedded or configured backends
    supportmesh serve ticketing             one server over stdio (Claude Desktop, IDEs) or HTTP
    supportmesh backends                    just the embedded engines, printing their URLs
    supportmesh migrate                     bring every server's schema up to date

Settings come from ``SUPPORTMESH_*`` variables or ``.env``; see ``servers/runtime/settings.py``.
"""

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from servers.runtime.backends import qdrant_location, start_backends
from servers.runtime.database import migrate as migrate_schema
from servers.runtime.serve import http_app, serve_stdio, serving_http
from servers.runtime.settings import Settings
from servers.runtime.telemetry import configure_logging
from servers.ticketing import server as ticketing


@dataclass(frozen=True)
class ServerEntry:
    module: ModuleType  # has NAME, MIGRATIONS, build_server(settings)
    port: int  # its default HTTP port under `up`
    needs: tuple[str, ...]  # backends its /readyz checks


SERVERS: dict[str, ServerEntry] = {
    "ticketing": ServerEntry(ticketing, 8701, ("postgres",)),
}
ServerName = StrEnum("ServerName", {name: name for name in SERVERS})  # type: ignore[misc]


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


app = typer.Typer(
    help="SupportMesh: an MCP-server-first tool mesh for customer support.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(log_level: str | None = None) -> Settings:
    settings = Settings()
    configure_logging(log_level or settings.log_level)
    # Until the event loop runs (starting engines), SIGTERM interrupts like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return settings


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until it ends, Ctrl-C or SIGTERM; either signal cancels it cleanly."""

    async def until_signalled() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(until_signalled())


@app.command()
def serve(
    name: Annotated[ServerName, typer.Argument(help="Which server to run.")],
    transport: Annotated[Transport, typer.Option(help="stdio for Claude Desktop / IDEs.")] = (
        Transport.stdio
    ),
    port: Annotated[int | None, typer.Option(help="HTTP port (default: the server's own).")] = None,
    host: Annotated[
        str | None, typer.Option(help="HTTP interface (default: from settings).")
    ] = None,
) -> None:
    """Run one MCP server over stdio or streamable HTTP (at /mcp, stateless).

    Backends whose URLs are unset are shared with a running `supportmesh up` or
    `supportmesh backends` in the same data directory, or else started embedded.
    """
    settings = _settings("WARNING" if transport is Transport.stdio else None)
    entry = SERVERS[name.value]
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        server = entry.module.build_server(ready)
        if transport is Transport.stdio:
            _run(serve_stdio(server))
        else:
            _run(_serve_http(server, ready, host or ready.host, port or entry.port, entry.needs))


async def _serve_http(
    server: Any, settings: Settings, host: str, port: int, needs: tuple[str, ...]
) -> None:
    async with serving_http(http_app(server, settings, needs), host, port):
        print(f"{server.name}: http://{host}:{port}/mcp", file=sys.stderr, flush=True)
        await asyncio.Event().wait()


@app.command()
def up(
    host: Annotated[
        str | None, typer.Option(help="HTTP interface (default: from settings).")
    ] = None,
    port_offset: Annotated[
        int, typer.Option(help="Add this to every server's port (8701 ticketing, ...).")
    ] = 0,
) -> None:
    """Start the whole mesh: backends (embedded or configured) and every server on HTTP.

    Prints each MCP URL and a Claude Desktop config snippet. Ctrl-C stops everything.
    """
    settings = _settings()
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        _run(_up(ready, host or ready.host, port_offset, started))
    print("SupportMesh stopped.", file=sys.stderr)


async def _up(settings: Settings, host: str, port_offset: int, started: float) -> None:
    urls: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, entry in SERVERS.items():
            port = entry.port + port_offset
            server = entry.module.build_server(settings)
            await stack.enter_async_context(
                serving_http(http_app(server, settings, entry.needs), host, port)
            )
            urls[name] = f"http://{host}:{port}/mcp"
        _print_mesh(settings, urls, time.monotonic() - started)
        await asyncio.Event().wait()


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


def claude_desktop_config(settings: Settings) -> dict[str, Any]:
    """``mcpServers`` entries that run each server over stdio on these backends."""
    command = shutil.which("supportmesh") or str(Path(sys.executable).parent / "supportmesh")
    return {
        "mcpServers": {
            f"supportmesh-{name}": {
                "command": command,
                "args": ["serve", name, "--transport", "stdio"],
                "env": backend_env(settings),
            }
            for name in SERVERS
        }
    }


def _print_mesh(settings: Settings, urls: dict[str, str], seconds: float) -> None:
    lines = [f"SupportMesh is up in {seconds:.1f} s.", "", "MCP servers (streamable HTTP):"]
    lines += [f"  {name:<10} {url}" for name, url in urls.items()]
    lines += [
        "",
        "Backends:",
        f"  postgres   {settings.postgres_url}",
        f"  redis      {settings.redis_url}",
        f"  kafka      {settings.kafka_bootstrap}",
        f"  qdrant     {qdrant_location(settings)}",
        "",
        "Try it:  npx @modelcontextprotocol/inspector --cli "
        f"{next(iter(urls.values()))} --transport http --method tools/list",
        "",
        "Claude Desktop (claude_desktop_config.json) - stdio servers on these backends:",
        json.dumps(claude_desktop_config(settings), indent=2),
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


@app.command()
def backends() -> None:
    """Start the embedded engines for every unset URL, print their URLs, run until Ctrl-C.

    `serve` and `up` in the same data directory use these instead of starting their own.
    """
    settings = _settings()
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        for key, value in backend_env(ready).items():
            print(f"{key}={value}", flush=True)
        signal.pause()


@app.command()
def migrate(
    names: Annotated[
        list[ServerName] | None, typer.Argument(help="Which servers (default: all).")
    ] = None,
) -> None:
    """Bring each server's PostgreSQL schema up to date (servers also do this at start-up)."""
    settings = _settings()
    with start_backends(settings) as ready:
        assert ready.postgres_url
        for name in [n.value for n in names] if names else list(SERVERS):
            module = SERVERS[name].module
            applied = migrate_schema(ready.postgres_url, module.NAME, module.MIGRATIONS)
            print(f"{name}: {'applied ' + ', '.join(applied) if applied else 'up to date'}")


if __name__ == "__main__":
    app()
