"""What ``supportmesh crm`` does, and the demo store ``supportmesh up`` loads into an empty CRM:
the CRM's database outside a running server (migrated, with its read cache)."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from clients.demo_data import DemoData
from schemas.crm import Store
from servers.crm import server as crm
from servers.crm import store
from servers.crm.retail_format import read_store, store_document
from servers.crm.store import Crm, LoadReport
from servers.runtime.cache import ReadCache, cache_prefix
from servers.runtime.database import migrate_and_open
from servers.runtime.settings import Settings


@contextlib.asynccontextmanager
async def crm_records(settings: Settings) -> AsyncIterator[Crm]:
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


async def load_demo_store(settings: Settings, data: DemoData) -> None:
    """Give a fresh mesh something to look at: a demo set's store, if the CRM has no
    customers."""
    async with crm_records(settings) as records:
        async with records.pool.connection() as conn:
            empty = await (await conn.execute("SELECT 1 FROM customers LIMIT 1")).fetchone()
        if empty is None:
            in_file = read_store(data.store / "db.json")
            await store.load_store(records, in_file, (data.store / "policy.md").read_text())
            print(
                f"Loaded the {data.name} store into the empty CRM ({data.store}: "
                f"{len(in_file.customers)} customers); load your own with "
                "`supportmesh crm load PATH`.",
                flush=True,
            )


async def load(settings: Settings, in_file: Store, policy_text: str | None) -> LoadReport:
    """Load a store (from ``read_store``) and the policy into the CRM."""
    async with crm_records(settings) as records:
        return await store.load_store(records, in_file, policy_text)


async def export(settings: Settings) -> dict[str, Any]:
    """The CRM's current state, in tau2-bench's retail format."""
    async with crm_records(settings) as records:
        return store_document(await store.export_store(records.pool))
