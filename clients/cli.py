"""The ``supportmesh`` command line (Typer).

    supportmesh up                          every server on HTTP, on embedded or configured backends
    supportmesh orchestrator                the service that handles every new ticket
    supportmesh serve ticketing             one server over stdio (Claude Desktop, IDEs) or HTTP
    supportmesh backends                    just the embedded engines, printing their URLs
    supportmesh migrate                     bring every server's schema up to date
    supportmesh crm load|export PATH        the CRM's customers, orders and products
    supportmesh kb ingest PATH | search Q   the knowledge base
    supportmesh token issue --role R ...    a bearer token for the HTTP transport

Settings come from ``SUPPORTMESH_*`` variables or ``.env``; see ``servers/runtime/settings.py``.
"""

import contextlib
import json
import os
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clients.demo_data import DemoSet
from clients.notifications import notifications_app
from clients.registry import SERVERS
from schemas.roles import Role

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from clients.demo_data import DemoData
    from clients.mesh import Mesh
    from servers.runtime.settings import Settings

# Servers, engines and their libraries are imported inside the commands that use them, so that
# `supportmesh --help` answers in a fraction of a second instead of several.
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


def _settings(log_level: str | None = None, traced_as: str | None = None) -> "Settings":
    """The settings, with logging configured, and tracing (OTLP, when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) for a process serving as ``traced_as``."""
    from servers.runtime.settings import Settings
    from servers.runtime.telemetry import configure_logging, configure_tracing

    settings = Settings()
    configure_logging(log_level or settings.log_level)
    if traced_as:
        configure_tracing(traced_as)
    # Until the event loop runs (starting engines), SIGTERM interrupts like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return settings


DEMO_SET_HELP = (
    "The demo set: demo (built in: 60 customers, 47 articles, 12 tickets) or tau2 "
    "(tau2-bench's retail store of 500 customers, our articles beside its 698 banking ones, "
    "10 tickets; `supportmesh data fetch tau2` first)."
)


def _demo_data(name: DemoSet, settings: "Settings") -> "DemoData":
    """Demo set ``name``; exit 2 with the instruction when it is not on this machine."""
    from clients.demo_data import DemoDataMissing, demo_data

    try:
        return demo_data(name, settings.data_dir)
    except DemoDataMissing as exc:
        print(f"supportmesh: {exc}", file=sys.stderr)
        raise typer.Exit(2) from exc


def _running_mesh(settings: "Settings", command: str, otherwise: str) -> "Mesh":
    """What the running `up` in the data directory serves; exit 2 saying so if none runs."""
    from clients.mesh import read_mesh

    mesh = read_mesh(settings.data_dir.resolve())
    if mesh is None:
        print(
            f"supportmesh {command}: no running mesh in {settings.data_dir} ({otherwise})",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    return mesh


def _run(main: "Coroutine[Any, Any, None]") -> None:
    """Run ``main`` until it ends, Ctrl-C or SIGTERM; either signal cancels it cleanly."""
    import asyncio

    from servers.runtime.serve import event_loop_factory

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
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="HTTP port (default: the server's own; 0: a free one)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="HTTP interface (default: from settings).")
    ] = None,
) -> None:
    """Run one MCP server over stdio or streamable HTTP (at /mcp, stateless).

    Backends whose URLs are unset are shared with a running `supportmesh up` or
    `supportmesh backends` in the same data directory, or else started embedded.
    """
    from clients.mesh import PortInUse, serve_http
    from servers.runtime.backends import start_backends
    from servers.runtime.serve import serve_stdio

    settings = _settings("WARNING" if transport is Transport.stdio else None, name.value)
    entry = SERVERS[name.value]
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        server = entry.module.build_server(ready)
        if transport is Transport.stdio:
            _run(serve_stdio(server, ready))
            return
        where = host or ready.host, entry.port if port is None else port
        try:
            _run(serve_http(server, ready, *where, entry.needs))
        except PortInUse as exc:
            print(f"supportmesh serve: {exc}", file=sys.stderr)
            raise typer.Exit(3) from exc


@app.command()
def up(
    host: Annotated[
        str | None, typer.Option(help="HTTP interface (default: from settings).")
    ] = None,
    port_offset: Annotated[
        int, typer.Option(help="Add this to every server's port (8701 ticketing, ...).")
    ] = 0,
    free_ports: Annotated[
        bool,
        typer.Option(
            "--free-ports",
            help="Let the system choose a free port for every server; the URLs are printed "
            "and kept in DATA_DIR/mesh.json while up runs.",
        ),
    ] = False,
    demo: Annotated[
        bool | None,
        typer.Option(
            help="Load the demo store and knowledge base into an empty CRM and knowledge base "
            "(default: only when PostgreSQL is embedded)."
        ),
    ] = None,
    data: Annotated[DemoSet, typer.Option(help=DEMO_SET_HELP)] = DemoSet.DEMO,
) -> None:
    """Start the whole mesh: backends (embedded or configured) and every server on HTTP.

    Prints each MCP URL and a Claude Desktop config snippet, and writes them to
    DATA_DIR/mesh.json for scripts. Ctrl-C stops everything.
    """
    import asyncio

    from clients.crm import load_demo_store
    from clients.mesh import PortInUse, run_up
    from servers.runtime.backends import start_backends

    settings = _settings(traced_as="mesh")
    started = time.monotonic()
    demo = settings.postgres_url is None if demo is None else demo
    demo_set = _demo_data(data, settings) if demo else None
    offset = None if free_ports else port_offset
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        if demo_set:
            asyncio.run(load_demo_store(ready, demo_set))
        try:
            _run(run_up(ready, host or ready.host, offset, started, demo_set))
        except PortInUse as exc:
            print(f"supportmesh up: {exc}", file=sys.stderr)
            raise typer.Exit(3) from exc
    print("SupportMesh stopped.", file=sys.stderr)


@app.command()
def demo(
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="Leave the mesh up afterwards (for the Inspector or Claude Desktop) until Ctrl-C.",
        ),
    ] = False,
    data: Annotated[DemoSet, typer.Option(help=DEMO_SET_HELP)] = DemoSet.DEMO,
) -> None:
    """See SupportMesh work: start the whole mesh on a fresh data directory of its own
    (DATA_DIR/demo, embedded engines unless configured), put a morning's tickets through the
    orchestrator, approve one that waits for a human as a second user, and report.

    Prints the report and writes it to DATA_DIR/demo/report.html (with charts) and
    report.json. Nothing is left running unless --keep-running.
    """
    import asyncio
    import shutil
    import subprocess

    from rich.console import Console

    from clients.demo import print_report, run_demo, write_report
    from clients.mesh import read_mesh

    settings = _settings("WARNING")
    console = Console()
    demo_set = _demo_data(data, settings)
    demo_dir = settings.data_dir.resolve() / "demo"
    running = read_mesh(demo_dir)
    if running is not None:
        print(
            f"supportmesh demo: a demo mesh runs already (pid {running.pid}, {demo_dir}); "
            "stop it first",
            file=sys.stderr,
        )
        raise typer.Exit(3)
    if settings.postgres_url is None:  # embedded engines: start from nothing, every time
        shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SUPPORTMESH_DATA_DIR": str(demo_dir)}
    if data is DemoSet.TAU2:  # found here, where DATA_DIR is still the user's
        env["SUPPORTMESH_SHARED_DATA"] = str(demo_set.store.parent.parent)
    started = time.monotonic()
    with (demo_dir / "up.log").open("wb") as log:
        up_process = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "up", "--free-ports", "--demo", "--data", data],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with console.status("Starting the mesh (six MCP servers, the orchestrator service, "
                            "PostgreSQL, Redis, Kafka, Qdrant, Celery)..."):  # fmt: skip
            while (mesh := read_mesh(demo_dir)) is None or mesh.pid != up_process.pid:
                if up_process.poll() is not None:
                    tail = (demo_dir / "up.log").read_text()[-3000:]
                    print(f"supportmesh demo: the mesh did not start:\n{tail}", file=sys.stderr)
                    raise typer.Exit(1)
                time.sleep(0.2)
        console.print(f"The mesh is up in {time.monotonic() - started:.1f} s ({demo_dir}).")
        settings = settings.model_copy(update={"data_dir": demo_dir})
        report = asyncio.run(run_demo(settings, mesh, console, demo_set))
        print_report(report, console)
        page = write_report(report, demo_dir)
        console.print(f"Report: {page}  (and report.json beside it)")
        if keep_running:
            console.print(
                "The mesh stays up; Ctrl-C stops it. Its servers, in "
                f"{demo_dir / 'mesh.json'}:\n"
                + "\n".join(f"  {name:<10} {url}" for name, url in mesh.servers.items())
                + f"\n  orchestrator {mesh.orchestrator}\nA token: SUPPORTMESH_DATA_DIR="
                f"{demo_dir} supportmesh token issue --role agent --subject you@example.com"
            )
            up_process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if up_process.poll() is None:
            up_process.terminate()
            try:
                up_process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up_process.kill()
                up_process.wait()


@app.command()
def handle(
    ticket_id: Annotated[int, typer.Argument(help="The ticket to handle.")],
    resume: Annotated[
        str | None,
        typer.Option(
            help="Resume a ticket waiting for approval: the approval's id. The decision is read "
            "from the approvals server, not given here."
        ),
    ] = None,
) -> None:
    """Run one ticket through the orchestrator against the servers of a running `up`,
    printing each step as it finishes. Exit code 0 once resolved, 4 while it waits for a
    human's approval (resume it with --resume APPROVAL_ID once decided), 5 if another runner
    is handling the ticket right now."""
    import asyncio

    from rich.console import Console

    from clients.handle import handle_ticket

    settings = _settings("WARNING")
    mesh = _running_mesh(
        settings,
        "handle",
        "start `supportmesh up`, or set SUPPORTMESH_DATA_DIR to its data directory",
    )
    settings = settings.model_copy(
        update={"postgres_url": mesh.backends["SUPPORTMESH_POSTGRES_URL"] or None}
    )
    from orchestrator.run import Busy

    try:
        resolved = asyncio.run(handle_ticket(settings, mesh, ticket_id, resume, Console()))
    except Busy as exc:
        print(f"supportmesh handle: {exc}; try again when it is done", file=sys.stderr)
        raise typer.Exit(5) from exc
    if not resolved:
        raise typer.Exit(4)


@app.command("orchestrator")
def orchestrator_service(
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port (0: a free one).")] = 8700,
    host: Annotated[
        str | None, typer.Option(help="HTTP interface (default: from settings).")
    ] = None,
) -> None:
    """Run the orchestrator service: it handles every new ticket (from Kafka's
    customer.requests, or POST /tickets), resumes tickets when their approval is decided, and
    serves each ticket's state, history and event stream over HTTP.

    It reaches the servers at SUPPORTMESH_MCP_URLS, or else at those of the running `up` in
    the data directory (`up` runs a service of its own). Replicas may run side by side on the
    same PostgreSQL and Kafka: they share the work, one runner per ticket.
    """
    from clients.mesh import PortInUse, serve_orchestrator
    from servers.runtime.backends import start_backends

    settings = _settings(traced_as="orchestrator")
    urls = settings.mcp_urls or (
        _running_mesh(
            settings,
            "orchestrator",
            "set SUPPORTMESH_MCP_URLS to the servers' MCP URLs (JSON), or start `supportmesh up`",
        ).servers
    )
    missing = sorted({"ticketing", "crm", "knowledge", "memory", "approvals"} - set(urls))
    if missing:
        raise typer.BadParameter(
            f"no URL for {', '.join(missing)}", param_hint="SUPPORTMESH_MCP_URLS"
        )
    with contextlib.suppress(KeyboardInterrupt), start_backends(settings) as ready:
        try:
            _run(serve_orchestrator(ready, host or ready.host, port, urls))
        except PortInUse as exc:
            print(f"supportmesh orchestrator: {exc}", file=sys.stderr)
            raise typer.Exit(3) from exc


@app.command("config")
def config(
    client: Annotated[
        str, typer.Argument(help="claude-desktop, cursor or vscode.", metavar="CLIENT")
    ],
    transport: Annotated[
        Transport,
        typer.Option(
            help="stdio: the client starts each server itself; http: it reaches the servers "
            "of the running `up` with a bearer token."
        ),
    ] = Transport.stdio,
    role: Annotated[Role, typer.Option(help="With http: the token's role.")] = Role.AGENT,
    subject: Annotated[
        str, typer.Option(help="With http: who the token stands for.")
    ] = "mcp-client",
) -> None:
    """Print CLIENT's MCP configuration for every server (JSON): paste it into
    claude_desktop_config.json, .cursor/mcp.json or .vscode/mcp.json."""
    from clients.mesh import McpClient, client_config
    from servers.runtime.auth import issue_token
    from servers.runtime.settings import Settings

    try:
        chosen = McpClient(client)
    except ValueError as exc:
        choices = ", ".join(c.value for c in McpClient)
        raise typer.BadParameter(f"one of {choices}", param_hint="CLIENT") from exc
    settings = Settings()
    if transport is Transport.stdio:
        print(json.dumps(client_config(chosen, settings), indent=2))
        return
    mesh = _running_mesh(settings, "config", "start `supportmesh up`, or use --transport stdio")
    if settings.auth_jwks_uri:
        raise typer.BadParameter(
            "tokens come from your identity provider: use --transport stdio, or put one of "
            "its tokens in the printed headers",
            param_hint="--transport",
        )
    bearer = issue_token(settings, role, subject, ttl_seconds=7 * 24 * 3600)  # the longest
    print(json.dumps(client_config(chosen, settings, mesh.servers, bearer), indent=2))


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
    ttl: Annotated[int, typer.Option(min=60, help="Seconds until it expires (at most 7 days).")] = 8
    * 3600,
) -> None:
    """Print a signed bearer token (JWT) for SUBJECT with ROLE's scopes.

    Signed with SUPPORTMESH_AUTH_SIGNING_KEY, or the key kept in the data directory, which the
    servers of this data directory verify with. Send it as `Authorization: Bearer <token>`.
    """
    from servers.runtime.auth import issue_token
    from servers.runtime.settings import Settings

    settings = Settings()
    if settings.auth_jwks_uri:
        raise typer.BadParameter(
            "tokens come from your identity provider (SUPPORTMESH_AUTH_JWKS_URI is set)",
            param_hint="SUPPORTMESH_AUTH_JWKS_URI",
        )
    if not subject.strip():
        raise typer.BadParameter("name who the token stands for", param_hint="--subject")
    try:
        print(issue_token(settings, role, subject, ttl))
    except ValueError as exc:  # a lifetime past MAX_TOKEN_SECONDS
        raise typer.BadParameter(str(exc), param_hint="--ttl") from exc


@app.command()
def backends() -> None:
    """Start the embedded engines for every unset URL, print their URLs, run until Ctrl-C.

    `serve` and `up` in the same data directory use these instead of starting their own.
    """
    from clients.mesh import backend_env
    from servers.runtime.backends import start_backends

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
    from servers.runtime.backends import start_backends
    from servers.runtime.database import migrate as migrate_schema

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
    import asyncio

    from clients import crm
    from servers.crm.retail_format import read_store
    from servers.runtime.backends import start_backends
    from servers.runtime.errors import InvalidArgument

    settings = _settings("WARNING")
    if path.is_dir():
        policy = policy or (path / "policy.md" if (path / "policy.md").exists() else None)
        path = path / "db.json"
    try:
        records = read_store(path)
    except InvalidArgument as exc:
        raise typer.BadParameter(str(exc), param_hint="PATH") from exc
    policy_text = policy.read_text() if policy else None
    with start_backends(settings) as ready:
        report = asyncio.run(crm.load(ready, records, policy_text))
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
    import asyncio

    from clients import crm
    from servers.runtime.backends import start_backends

    settings = _settings("WARNING")
    with start_backends(settings) as ready:
        document = asyncio.run(crm.export(ready))
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
    import asyncio

    from servers.runtime.auth import issue_token
    from servers.runtime.backends import start_backends

    settings = _settings("WARNING")
    if url:
        bearer = os.environ.get("SUPPORTMESH_TOKEN") or issue_token(
            settings, settings.role, settings.actor, ttl_seconds=3600
        )
        return asyncio.run(_call_with(url, use, bearer))
    with start_backends(settings) as ready:
        server = SERVERS["knowledge"].module.build_server(ready)
        return asyncio.run(_call_with(server, use))


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


app.add_typer(notifications_app, name="notifications")
data_app = typer.Typer(help="Optional data sets, fetched on demand.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="The data set: tau2.")],
    dest: Annotated[
        Path | None,
        typer.Option(help="Where to put it (default: DATA_DIR/datasets, where tests look)."),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(help="A base URL serving the repository's files at the pinned commit."),
    ] = None,
) -> None:
    """Download a data set from its repository at a pinned commit, checking every file's
    sha256. Files already in place with the right hash are kept; running it twice is cheap.

    tau2: tau2-bench's retail store and banking knowledge base (MIT); then `supportmesh demo
    --data tau2` runs on them, `supportmesh crm load DEST/tau2/retail` and `supportmesh kb
    ingest DEST/tau2/banking_knowledge/documents` load them, and the tests that need them run.
    """
    import asyncio

    from rich.progress import Progress

    from clients import data
    from servers.runtime.settings import Settings

    try:
        manifest = data.load_manifest(name)
    except KeyError as exc:
        choices = ", ".join(data.manifests())
        raise typer.BadParameter(f"no data set {name!r}; choose from {choices}") from exc
    target = dest or Settings().data_dir / "datasets"
    with Progress(transient=True) as bar:
        task = bar.add_task(f"{name} @ {manifest.commit[:10]}", total=len(manifest.files))
        try:
            fetched = asyncio.run(data.fetch(manifest, target, mirror, lambda _: bar.advance(task)))
        except data.FetchFailed as exc:
            print(f"supportmesh data fetch: {exc}", file=sys.stderr)
            raise typer.Exit(1) from exc
    print(
        f"{name}: {len(fetched.downloaded)} files downloaded, {len(fetched.present)} already "
        f"there, all checked, in {target.resolve()}\nfrom {manifest.repository} at "
        f"{manifest.commit}: {manifest.description}"
    )


analytics_app = typer.Typer(help="The analytics server's aggregates.", no_args_is_help=True)
app.add_typer(analytics_app, name="analytics")


@analytics_app.command("rebuild")
def analytics_rebuild() -> None:
    """Empty the analytics aggregates and replay every server's outbox into them (the outboxes
    are the durable record of every event); the result equals what the running analytics
    server built from Kafka. A running server waits for the rebuild, then carries on."""
    import asyncio

    from servers.analytics import server as analytics
    from servers.analytics.store import rebuild
    from servers.runtime.backends import start_backends
    from servers.runtime.database import migrate_and_open

    async def replay(url: str) -> dict[str, int]:
        pool = await migrate_and_open(url, analytics.NAME, analytics.MIGRATIONS)
        try:
            return await rebuild(pool)
        finally:
            await pool.close()

    settings = _settings("WARNING")
    started = time.monotonic()
    with start_backends(settings) as ready:
        assert ready.postgres_url
        replayed = asyncio.run(replay(ready.postgres_url))
    for schema, events in replayed.items():
        print(f"{schema:<12} {events} events")
    print(f"rebuilt from {sum(replayed.values())} events in {time.monotonic() - started:.1f} s")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Tasks run at once.")] = 2,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only these servers' tasks (repeatable), e.g. --only notifications; "
            "default: every server's."
        ),
    ] = None,
) -> None:
    """Run a Celery worker for the servers' background tasks.

    With Qdrant in local mode (SUPPORTMESH_QDRANT_URL unset) the store admits one process, so
    the knowledge server runs its own worker: then name the other servers with --only.
    """
    from clients.registry import task_modules
    from servers.runtime.backends import start_backends
    from servers.runtime.tasks import configure_tasks, task_queue

    settings = _settings(traced_as="worker")
    task_modules()
    if "knowledge" in (only or ["knowledge"]) and not settings.qdrant_url:
        raise typer.BadParameter(
            "Qdrant is in local mode: the knowledge server works its own tasks. "
            "Set SUPPORTMESH_QDRANT_URL to run workers apart, or name the others with --only.",
            param_hint="SUPPORTMESH_QDRANT_URL",
        )
    with start_backends(settings) as ready:
        # Configured before its tasks are looked at: reading them binds each task to the
        # app's configuration of that moment (acks_late among it).
        app = configure_tasks(ready)
        known = sorted({name.split(".")[0] for name in app.tasks if not name.startswith("celery.")})
        if unknown := sorted(set(only or []) - set(known)):
            raise typer.BadParameter(
                f"no tasks for {', '.join(unknown)}; choose from {', '.join(known)}",
                param_hint="--only",
            )
        queues = [task_queue(ready, name) for name in only or known]
        app.Worker(concurrency=concurrency, loglevel="INFO", queues=queues).start()


@app.command()
def beat() -> None:
    """Send every server's periodic tasks (SLA scan, approval expiry and reminders, memory
    consolidation, stale ingests, checkpoint pruning) on their schedules, for a mesh whose
    servers run with SUPPORTMESH_BEAT_IN_PROCESS=false; the workers run them. One is enough;
    a second is harmless, since every periodic task is safe to run twice.
    """
    from clients.registry import task_modules
    from servers.runtime.backends import start_backends
    from servers.runtime.tasks import Schedule, run_beat

    settings = _settings(traced_as="beat")
    with start_backends(settings) as ready:
        schedule: Schedule = {}
        for module in task_modules():
            if hasattr(module, "schedule"):
                schedule |= module.schedule(ready)
        print(
            "supportmesh beat: sending "
            + ", ".join(
                f"{name} every {entry['schedule']:g} s" for name, entry in sorted(schedule.items())
            ),
            file=sys.stderr,
            flush=True,
        )
        run_beat(ready, schedule)


if __name__ == "__main__":
    app()
