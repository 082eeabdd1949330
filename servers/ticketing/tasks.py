"""The ticketing server's periodic task: announce breached SLA clocks.

Sent by Celery beat every ``sla_scan_seconds``. Each breached clock (first response, resolution)
of each ticket is announced once: a ``ticket.sla_breached`` event on ``agent.actions`` (which
analytics counts) and a notification to the assignee, recorded with the ticket and clock as the
write's idempotency key. Safe to run twice, or in two workers at once.
"""

import asyncio
import logging

from schemas.roles import ROLE_SCOPES, Role
from servers.runtime.auth import Caller
from servers.runtime.database import open_pool
from servers.runtime.settings import Settings
from servers.runtime.tasks import Schedule, task_settings, tasks
from servers.ticketing import store

log = logging.getLogger(__name__)
SCHEMA = "ticketing"
SCAN_TASK = "ticketing.scan_sla"
SCANNER = Caller(actor="system:sla-scan", scopes=frozenset(ROLE_SCOPES[Role.ADMIN]))


def schedule(settings: Settings) -> Schedule:
    """Celery beat's entry: ``ticketing.scan_sla`` every ``sla_scan_seconds``."""
    return {SCAN_TASK: {"task": SCAN_TASK, "schedule": settings.sla_scan_seconds}}


async def scan_sla() -> int:
    """Announce every breached clock not yet announced; how many were."""
    settings = task_settings()
    assert settings.postgres_url
    pool = await open_pool(settings.postgres_url, SCHEMA, max_size=2)
    try:
        breaches = await store.unannounced_breaches(pool, settings.sla_policy)
        for ticket_id, clock, due_at in breaches:
            await store.announce_breach(
                pool, SCANNER, ticket_id, clock, due_at, settings.notify_team
            )
        return len(breaches)
    finally:
        await pool.close()


@tasks.task(name=SCAN_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def scan_sla_breaches() -> int:
    announced = asyncio.run(scan_sla())
    if announced:
        log.info("announced %d breached SLA clocks", announced)
    return announced
