"""PostgreSQL: one schema per server, a psycopg 3 async pool, yoyo migrations.

Each server's pool sets ``search_path`` to its schema, so its SQL names its own tables plainly
and cannot read another server's by accident. Migrations are versioned ``.sql`` files applied
by yoyo-migrations: first the runtime's own (outbox, audit, idempotency keys: the same tables in
every schema), then the server's. yoyo keeps its log in the schema and takes a lock, so several
replicas starting at once migrate once.
"""

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

Row = dict[str, Any]
Pool = AsyncConnectionPool[AsyncConnection[Row]]

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"


def _yoyo_url(postgres_url: str, schema: str) -> str:
    parts = urlsplit(postgres_url)
    query = "&".join(q for q in [parts.query, urlencode({"schema": schema})] if q)
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, query, ""))


def migrate(postgres_url: str, schema: str, migrations: Path) -> list[str]:
    """Bring ``schema`` up to date; return the ids of the migrations applied now."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psycopg.sql.Identifier(schema))
        )
    backend = get_backend(_yoyo_url(postgres_url, schema))
    try:
        with backend.lock():
            pending = backend.to_apply(read_migrations(str(RUNTIME_MIGRATIONS), str(migrations)))
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    applied = [m.id for m in pending]
    if applied:
        log.info("migrated %s: %s", schema, ", ".join(applied))
    return applied


async def open_pool(postgres_url: str, schema: str, max_size: int = 10) -> Pool:
    """A ready pool whose connections use ``schema`` and return rows as dicts.

    Connections are in autocommit: a read is one round trip, with no BEGIN before it and no
    COMMIT when the pool takes the connection back. Writes open ``conn.transaction()``.
    """
    pool: Pool = AsyncConnectionPool(
        postgres_url,
        connection_class=AsyncConnection[Row],
        min_size=1,
        max_size=max_size,
        kwargs={
            "options": f"-c search_path={schema}",
            "row_factory": dict_row,
            "autocommit": True,
        },
        open=False,
        name=schema,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def migrate_and_open(postgres_url: str, schema: str, migrations: Path) -> Pool:
    await asyncio.to_thread(migrate, postgres_url, schema, migrations)
    return await open_pool(postgres_url, schema)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def values_starting_with(pool: Pool, sql: str, prefix: str) -> list[Any]:
    """The first column of ``sql``, whose one parameter is a LIKE pattern, for ``prefix``:
    what completions offer for a partly typed id."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(sql, [like_prefix(prefix)])).fetchall()
    return [next(iter(row.values())) for row in rows]
