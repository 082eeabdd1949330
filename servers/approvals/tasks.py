"""The approvals server's periodic task: remind approvers of approvals about to expire, and
mark approvals past their expiry as expired.

Sent by Celery beat every ``approval_sweep_seconds``. Safe to run twice, or in two workers at
once: each approval is reminded of once and expired once, under its row lock and only while
still pending, with its event (or message to approvers) and audit row in the same transaction.
"""

import asyncio
import logging
from datetime import timedelta

from schemas.roles import ROLE_SCOPES, Role
from servers.approvals import store
from servers.runtime.auth import Caller
from servers.runtime.database import open_pool
from servers.runtime.settings import Settings
from servers.runtime.tasks import Schedule, task_settings, tasks

log = logging.getLogger(__name__)
SCHEMA = "approvals"
SWEEP_TASK = "approvals.expire_due"
EXPIRY = Caller(actor="system:approval-expiry", scopes=frozenset(ROLE_SCOPES[Role.ADMIN]))


def schedule(settings: Settings) -> Schedule:
    """Celery beat's entry: ``approvals.expire_due`` every ``approval_sweep_seconds``."""
    return {SWEEP_TASK: {"task": SWEEP_TASK, "schedule": settings.approval_sweep_seconds}}


async def expire_due() -> int:
    """Remind approvers of approvals expiring within ``approval_warning_seconds``, then expire
    every pending approval past its expiry; how many were expired."""
    settings = task_settings()
    assert settings.postgres_url
    pool = await open_pool(settings.postgres_url, SCHEMA, max_size=2)
    try:
        if settings.approval_warning_seconds:
            ahead = timedelta(seconds=settings.approval_warning_seconds)
            for approval_id in await store.due_for_reminder(pool, ahead):
                await store.remind(pool, EXPIRY, approval_id, settings.notify_approvers)
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
