"""The ``supportmesh`` command line (Typer).

    supportmesh up                          every server on HTTP, on embedded or configured backends
    supportmesh serve ticketing             one server over stdio (Claude Desktop, IDEs) or HTTP
    supportmesh backends                    just the embedded engines, printing their URLs
    supportmesh migrate                     bring every server's schema up to date
    supportmesh crm load|export PATH        the CRM's customers, orders and products
    supportmesh kb ingest PATH | search Q   the knowledge base
    supportmesh token issue --role R ...    a bearer token for the HTTP transport

Settings come from ``SUPPORTMESH_*`` variables or ``.env``; see ``servers/runtime/settings.py``.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from schemas.common import Role
from servers.approvals import server as approvals
from servers.crm import server as crm
from servers.crm import store as crm_store
from servers.crm.retail_format import read_store, store_document
from servers.crm.store import Crm, LoadReport
from servers.knowledge import server as knowledge
from servers.memory import server as memory
from servers.runtime.auth import issue_token
from servers.runtime.backends import qdrant_location, start_backends
from servers.runtime.cache import ReadCache, cache_prefix
from servers.runtime.database import migrate as migrate_schema
from servers.runtime.database import migrate_and_open
from servers.runtime.errors import InvalidArgument
from servers.runtime.serve import event_loop_factory, http_app, serve_stdio, serving_http
from servers.runtime.settings import Settings
from servers.runtime.tasks import work_here
from servers.runtime.telemetry import configure_logging
from servers.ticketing import server as ticketing


@dataclass(frozen=True)
class ServerEntry:
    module: ModuleType  # has NAME, MIGRATIONS, build_server(settings)
    port: int  # its default HTTP port under `up`
    needs: tuple[str, ...]  # backends its /readyz checks


SERVERS: dict[str, ServerEntry] = {
    "ticketing": ServerEntry(ticketing, 8701, ("postgres",)),
    "crm": ServerEntry(crm, 8702, ("postgres", "redis")),
    "knowledge": ServerEntry(knowledge, 8703, ("postgres", "redis")),
    "memory": ServerEntry(memory, 8705, ("postgres", "redis")),
    "approvals": ServerEntry(approvals, 8706, ("postgres", "redis")),
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

    with (
        contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError),
        asyncio.Runner(loop_factory=event_loop_factory()) as runner,
    ):
        runner.run(until_signalled())


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
    app = http_app(server, settings, needs, f"http://{host}:{port}")
    async with serving_http(app, host, port):
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
    demo: Annotated[
        bool | None,
        typer.Option(
            help="Load the small demo store into an empty CRM (default: only when PostgreSQL "
            "is embedded)."
        ),
    ] = None,
) -> None:
    """Start the whole mesh: backends (embedded or configured) and every server on HTTP.

    Prints each MCP URL and a Claude Desktop config snippet. Ctrl-C stops everything.
    """
    settings = _settings()
    started = time.monotonic()
    demo = settings.postgres_url is None if demo is None else demo
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        if demo:
            asyncio.run(_load_demo_store(ready))
        _run(_up(ready, host or ready.host, port_offset, started))
    print("SupportMesh stopped.", file=sys.stderr)


async def _up(settings: Settings, host: str, port_offset: int, started: float) -> None:
    urls: dict[str, str] = {}
    work_here(*SERVERS)  # one Celery worker in this process runs every server's tasks
    async with contextlib.AsyncExitStack() as stack:
        for name, entry in SERVERS.items():
            port = entry.port + port_offset
            server = entry.module.build_server(settings)
            app = http_app(server, settings, entry.needs, f"http://{host}:{port}")
            await stack.enter_async_context(serving_http(app, host, port))
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
        "Every HTTP call needs a bearer token; mint one and try it:",
        "  TOKEN=$(supportmesh token issue --role agent --subject you@example.com)",
        "  npx @modelcontextprotocol/inspector --cli "
        f"{next(iter(urls.values()))} --transport http "
        '--header "Authorization: Bearer $TOKEN" --method tools/list',
        "",
        "Claude Desktop (claude_desktop_config.json) - stdio servers on these backends:",
        json.dumps(claude_desktop_config(settings), indent=2),
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


token_app = typer.Typer(help="Bearer tokens for the HTTP transport.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("issue")
def token_issue(
    role: Annotated[
        Role,
        typer.Option(
            help="agent: read + ordinary writes; approver: + decide approvals; "
            "admin: + ingest, delete, erase."
        ),
    ],
    subject: Annotated[
        str, typer.Option(help="Who the token stands for: audit rows and approvals name them.")
    ],
    ttl: Annotated[int, typer.Option(min=60, help="Seconds until it expires.")] = 8 * 3600,
) -> None:
    """Print a signed bearer token (JWT) for SUBJECT with ROLE's scopes.

    Signed with SUPPORTMESH_AUTH_SIGNING_KEY, or the key kept in the data directory, which the
    servers of this data directory verify with. Send it as `Authorization: Bearer <token>`.
    """
    settings = Settings()
    if settings.auth_jwks_uri:
        raise typer.BadParameter(
            "tokens come from your identity provider (SUPPORTMESH_AUTH_JWKS_URI is set)",
            param_hint="SUPPORTMESH_AUTH_JWKS_URI",
        )
    print(issue_token(settings, role, subject, ttl))


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


crm_app = typer.Typer(
    help="The CRM's data: load a store file, export the current state.", no_args_is_help=True
)
app.add_typer(crm_app, name="crm")


@contextlib.asynccontextmanager
async def _crm_records(settings: Settings) -> AsyncIterator[Crm]:
    """The CRM's database (migrated) and cache, outside a running server."""
    assert settings.postgres_url and settings.redis_url
    pool = await migrate_and_open(settings.postgres_url, crm.NAME, crm.MIGRATIONS)
    cache = ReadCache(
        settings.redis_url,
        cache_prefix(crm.NAME, settings.postgres_url),
        settings.cache_ttl_seconds,
    )
    try:
        yield Crm(pool=pool, cache=cache, settings=settings)
    finally:
        await cache.close()
        await pool.close()


async def _load_demo_store(settings: Settings) -> None:
    """Give a fresh mesh something to look at: the demo store, if the CRM has no customers."""
    async with _crm_records(settings) as records_db:
        async with records_db.pool.connection() as conn:
            empty = await (await conn.execute("SELECT 1 FROM customers LIMIT 1")).fetchone()
        if empty is None:
            await crm_store.load_store(
                records_db,
                read_store(crm.DEMO_STORE / "db.json"),
                (crm.DEMO_STORE / "policy.md").read_text(),
            )
            print(
                f"Loaded the demo store into the empty CRM ({crm.DEMO_STORE}); "
                "load your own with `supportmesh crm load PATH`.",
                flush=True,
            )


@crm_app.command("load")
def crm_load(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="A store file in tau2-bench's retail format (db.json), or a directory "
            "holding db.json and policy.md.",
        ),
    ],
    policy: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="The support policy (markdown)."),
    ] = None,
) -> None:
    """Load customers, products and orders (and the policy, served as crm://policy).

    Records are upserted in one transaction: loading the same file twice changes nothing,
    and records not in the file stay as they are.
    """
    settings = _settings("WARNING")
    if path.is_dir():
        policy = policy or (path / "policy.md" if (path / "policy.md").exists() else None)
        path = path / "db.json"
    try:
        records = read_store(path)
    except InvalidArgument as exc:
        raise typer.BadParameter(str(exc), param_hint="PATH") from exc
    policy_text = policy.read_text() if policy else None

    async def load() -> LoadReport:
        async with _crm_records(ready) as records_db:
            return await crm_store.load_store(records_db, records, policy_text)

    with start_backends(settings) as ready:
        report = asyncio.run(load())
    for table, (added, changed, same) in report.counts.items():
        print(f"{table:<10} {added} added, {changed} changed, {same} unchanged")
    if report.policy:
        print(f"policy     loaded from {policy}")


@crm_app.command("export")
def crm_export(
    path: Annotated[Path, typer.Argument(dir_okay=False, help="Where to write the file.")],
) -> None:
    """Write every customer, product and order to PATH in tau2-bench's retail format, so a run
    can be compared with the reference environment's state."""
    settings = _settings("WARNING")

    async def export() -> dict[str, Any]:
        async with _crm_records(ready) as records_db:
            return store_document(await crm_store.export_store(records_db.pool))

    with start_backends(settings) as ready:
        document = asyncio.run(export())
    path.write_text(json.dumps(document, indent=2) + "\n")
    counts = ", ".join(f"{len(v)} {k}" for k, v in document.items())
    print(f"wrote {counts} to {path}")


kb_app = typer.Typer(help="The knowledge base: ingest articles, search them.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
UrlOption = Annotated[
    str | None,
    typer.Option(
        help="A running knowledge server's MCP URL (e.g. http://127.0.0.1:8703/mcp), called "
        "with $SUPPORTMESH_TOKEN, or else a token minted here as SUPPORTMESH_ACTOR with "
        "SUPPORTMESH_ROLE; by default the server runs inside this command on the configured "
        "or embedded backends."
    ),
]


def _with_knowledge(url: str | None, use: Any) -> Any:
    """Run ``use(client)`` against the server at ``url``, or one started here."""
    settings = _settings("WARNING")
    if url:
        bearer = os.environ.get("SUPPORTMESH_TOKEN") or issue_token(
            settings, settings.role, settings.actor, ttl_seconds=3600
        )
        return asyncio.run(_call_with(url, use, bearer))
    with start_backends(settings) as ready:
        return asyncio.run(_call_with(knowledge.build_server(ready), use))


async def _call_with(target: Any, use: Any, bearer: str | None = None) -> Any:
    from fastmcp import Client

    async with Client(target, auth=bearer) as client:
        return await use(client)


@kb_app.command("ingest")
def kb_ingest(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="A folder (searched recursively) or file: .json records {id, title, content} "
            "or .md files (id = file name, title = first '# ' heading).",
        ),
    ],
    source: Annotated[str, typer.Option(help="The articles' source, for filtering.")] = "files",
    url: UrlOption = None,
) -> None:
    """Ingest articles and wait, with a progress bar, until they are searchable.

    Unchanged articles are skipped; changed ones replace their old passages.
    """
    from rich.console import Console

    from clients import kb

    console = Console(stderr=True)
    try:
        articles = kb.read_articles(path)
    except kb.ArticleFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="PATH") from exc
    started = time.monotonic()
    totals = _with_knowledge(
        url, lambda client: kb.ingest_with_progress(client, articles, source, console)
    )
    console.print(
        f"{len(articles)} articles: {totals['indexed']} indexed, {totals['unchanged']} "
        f"unchanged, {totals['failed']} failed, in {time.monotonic() - started:.1f} s"
    )
    if totals["failed"]:
        raise typer.Exit(1)


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="A question, in a customer's words.")],
    k: Annotated[int, typer.Option(help="How many passages.")] = 5,
    mode: Annotated[str, typer.Option(help="hybrid, dense or lexical.")] = "hybrid",
    url: UrlOption = None,
) -> None:
    """Print the passages that best answer QUERY, ranked, with what to cite."""
    from rich.console import Console

    from clients import kb

    hits = _with_knowledge(url, lambda client: kb.search(client, query, k, mode))
    kb.print_hits(Console(), hits)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Tasks run at once.")] = 2,
) -> None:
    """Run a Celery worker for every server's background tasks (needs SUPPORTMESH_QDRANT_URL).

    With Qdrant in local mode the store admits one process, so the knowledge server runs its
    own worker and this command is not needed.
    """
    settings = _settings()
    if not settings.qdrant_url:
        raise typer.BadParameter(
            "Qdrant is in local mode: the knowledge server works its own tasks. "
            "Set SUPPORTMESH_QDRANT_URL to run workers apart.",
            param_hint="SUPPORTMESH_QDRANT_URL",
        )
    import servers.approvals.tasks
    import servers.knowledge.tasks
    import servers.memory.tasks  # noqa: F401
    from servers.runtime.tasks import configure_tasks, server_queues

    with start_backends(settings) as ready:
        worker = configure_tasks(ready).Worker(
            concurrency=concurrency, loglevel="INFO", queues=server_queues(ready)
        )
        worker.start()


if __name__ == "__main__":
    app()
