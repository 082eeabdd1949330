"""The approvals server's periodic task: mark approvals past their expiry as expired.

Sent by Celery beat every ``approval_sweep_seconds``. Safe to run twice, or in two workers at
once: each approval is expired under its row lock and only while still pending, with its
``approval.expired`` event and audit row in the same transaction.
"""

import asyncio
import logging

from schemas.roles import ROLE_SCOPES, Role
from servers.approvals import store
from servers.runtime.auth import Caller
from servers.runtime.database import open_pool
from servers.runtime.tasks import task_settings, tasks

log = logging.getLogger(__name__)
SCHEMA = "approvals"
SWEEP_TASK = "approvals.expire_due"
EXPIRY = Caller(actor="system:approval-expiry", scopes=frozenset(ROLE_SCOPES[Role.ADMIN]))


async def expire_due() -> int:
    """Expire every pending approval past its expiry; how many were expired."""
    url = task_settings().postgres_url
    assert url
    pool = await open_pool(url, SCHEMA, max_size=2)
    try:
        expired = 0
        for approval_id in await store.due_for_expiry(pool):
            if await store.expire(pool, EXPIRY, approval_id) is not None:
                expired += 1
        return expired
    finally:
        await pool.close()


@tasks.task(name=SWEEP_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def expire_due_approvals() -> int:
    expired = asyncio.run(expire_due())
    if expired:
        log.info("expired %d approvals", expired)
    return expired
