"""Fixtures: real backends for the whole session, embedded unless a URL is configured.

Set ``SUPPORTMESH_POSTGRES_URL`` (any database on the server; the tests create and drop their
own), ``SUPPORTMESH_REDIS_URL`` or ``SUPPORTMESH_KAFKA_BOOTSTRAP`` to run against those servers
instead of the embedded engines. Nothing here is a mock.
"""

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from fastmcp import Client, FastMCP

from schemas.events import Event
from servers.runtime.backends import create_database, start_backends
from servers.runtime.settings import Settings
from servers.ticketing.server import build_server as build_ticketing


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
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose backend URLs all point at running servers."""
    data_dir = tmp_path_factory.mktemp("supportmesh")
    with start_backends(Settings(data_dir=data_dir), durable=False) as ready:
        yield ready


@pytest.fixture(scope="session")
def settings(backends: Settings) -> Iterator[Settings]:
    """``backends`` with a fresh database of this test session's own."""
    assert backends.postgres_url
    with fresh_database(backends.postgres_url) as url:
        yield backends.model_copy(update={"postgres_url": url})


@pytest.fixture(scope="session")
def ticketing_server(settings: Settings) -> FastMCP[Any]:
    return build_ticketing(settings)


@pytest.fixture(scope="session")
async def ticketing(ticketing_server: FastMCP[Any]) -> AsyncIterator[Client[Any]]:
    """An MCP client of the ticketing server (in-memory transport, the real server)."""
    async with Client(ticketing_server) as client:
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
    env.update(
        SUPPORTMESH_POSTGRES_URL=settings.postgres_url or "",
        SUPPORTMESH_REDIS_URL=settings.redis_url or "",
        SUPPORTMESH_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        SUPPORTMESH_DATA_DIR=str(Path(settings.data_dir).resolve()),
    )
    return env
