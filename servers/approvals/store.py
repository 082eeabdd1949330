"""Approvals in PostgreSQL: request, read, list, decide, expire.

Every change goes through ``perform_write`` (idempotency key, audit row, outbox event on
``human.approvals``, all in one transaction). A decision locks the approval's row, so of two
approvers deciding at once one wins and the other gets ``conflict``.
"""

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import BaseModel

from schemas.approvals import Approval, ApprovalPage, ApprovalStatus, Decision
from schemas.events import Topic
from servers.runtime.auth import Caller
from servers.runtime.database import Pool, Row
from servers.runtime.errors import Conflict, NotFound, PermissionDenied
from servers.runtime.pages import decode_cursor, encode_cursor
from servers.runtime.writes import Write, lock_row, perform_write

SOURCE = "approvals"
COLUMNS = """id, subject, action_tool, action_arguments, amount, currency, reason,
    CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END AS status,
    requested_by, requested_at, expires_at, decided_by, decided_at, comment"""
INSERT = f"""
    INSERT INTO approvals (id, subject, action_tool, action_arguments, amount, currency, reason,
        status, requested_by, expires_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', %s, now() + %s)
    RETURNING {COLUMNS}
"""
DECIDE = f"""
    UPDATE approvals SET status = %s, decided_by = %s, decided_at = now(), comment = %s
    WHERE id = %s RETURNING {COLUMNS}
"""
EXPIRE = f"""
    UPDATE approvals SET status = 'expired', decided_at = now()
    WHERE id = %s AND status = 'pending' AND expires_at <= now() RETURNING {COLUMNS}
"""


def _subject(approval_id: str) -> str:
    return f"approval/{approval_id}"


def _event_data(approval: Approval) -> dict[str, Any]:
    return {
        "approval_id": approval.id,
        "status": approval.status.value,
        "subject": approval.subject,
        "action_tool": approval.action_tool,
        "amount": str(approval.amount) if approval.amount is not None else None,
        "currency": approval.currency,
        "requested_by": approval.requested_by,
        "decided_by": approval.decided_by,
        "comment": approval.comment,
    }


async def request_approval(
    pool: Pool,
    caller: Caller,
    subject: str,
    action_tool: str,
    action_arguments: dict[str, Any],
    amount: Decimal | None,
    currency: str,
    reason: str,
    expires_in: timedelta,
    idempotency_key: str | None,
    approvers: list[str],
) -> Approval:
    """Record a pending approval, with its event and a message to ``approvers``."""

    async def change(write: Write) -> Approval:
        values = [
            f"apr_{uuid.uuid4().hex}",
            subject,
            action_tool,
            Jsonb(action_arguments),
            amount,
            currency,
            reason,
            caller.actor,
            expires_in,
        ]
        row = await (await write.conn.execute(INSERT, values)).fetchone()
        assert row is not None
        approval = Approval.model_validate(row)
        write.emit(
            Topic.HUMAN_APPROVALS,
            "approval.requested",
            _subject(approval.id),
            _event_data(approval),
        )
        write.notify(
            "approval.waiting",
            _subject(approval.id),
            approvers,
            f"Approval needed: {_action(approval)}",
            f"{approval.requested_by} asks to run {_action(approval)}.\n"
            f"Reason: {approval.reason}\nArguments: {json.dumps(approval.action_arguments)}\n"
            f"It expires at {approval.expires_at:%Y-%m-%d %H:%M} UTC. Decide with the "
            f"decide_approval tool (approval_id {approval.id}).",
            approval_id=approval.id,
        )
        return approval

    arguments = {
        "subject": subject,
        "action_tool": action_tool,
        "action_arguments": action_arguments,
        "amount": amount,
        "currency": currency,
        "reason": reason,
        "expires_in": expires_in.total_seconds(),
    }
    return await perform_write(
        pool,
        source=SOURCE,
        tool="request_approval",
        caller=caller,
        arguments=arguments,
        idempotency_key=idempotency_key,
        result_type=Approval,
        change=change,
    )


async def get_approval(pool: Pool, approval_id: str) -> Approval:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {COLUMNS} FROM approvals WHERE id = %s", [approval_id])
        row = await cur.fetchone()
    if row is None:
        raise NotFound("approval_id", f"no approval {approval_id}")
    return Approval.model_validate(row)


def check_decidable(approval: Approval, caller: Caller) -> None:
    """Refuse a decision the approval or the caller does not allow."""
    if approval.requested_by == caller.actor:
        raise PermissionDenied(
            "approval_id", "you requested this approval; another approver must decide it"
        )
    if approval.status is not ApprovalStatus.PENDING:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise Conflict("approval_id", f"already {approval.status.value}{by}")


async def decide_approval(
    pool: Pool,
    caller: Caller,
    approval_id: str,
    decision: Decision,
    comment: str | None,
    idempotency_key: str | None,
) -> Approval:
    async def change(write: Write) -> Approval:
        lock = f"SELECT {COLUMNS} FROM approvals WHERE id = %s FOR UPDATE NOWAIT"
        row = await lock_row(write, lock, [approval_id], "approval_id", f"approval {approval_id}")
        if row is None:
            raise NotFound("approval_id", f"no approval {approval_id}")
        check_decidable(Approval.model_validate(row), caller)
        status = "approved" if decision is Decision.APPROVE else "rejected"
        cur = await write.conn.execute(DECIDE, [status, caller.actor, comment, approval_id])
        decided = Approval.model_validate(await cur.fetchone())
        write.emit(
            Topic.HUMAN_APPROVALS, "approval.decided", _subject(approval_id), _event_data(decided)
        )
        return decided

    return await perform_write(
        pool,
        source=SOURCE,
        tool="decide_approval",
        caller=caller,
        arguments={"approval_id": approval_id, "decision": decision, "comment": comment},
        idempotency_key=idempotency_key,
        result_type=Approval,
        change=change,
    )


async def list_pending(
    pool: Pool,
    subject: str | None,
    requested_by: str | None,
    limit: int,
    cursor: str | None,
) -> ApprovalPage:
    """Pending approvals, oldest request first (those past expiry are left out)."""
    query = {"subject": subject, "requested_by": requested_by}
    where = ["status = 'pending'", "expires_at > now()"]
    params: list[Any] = []
    if subject is not None:
        where.append("subject = %s")
        params.append(subject)
    if requested_by is not None:
        where.append("requested_by = %s")
        params.append(requested_by)
    if cursor is not None:
        where.append("(requested_at, id) > (%s, %s)")
        params += decode_cursor(
            cursor, query, "list_pending_approvals", (datetime.fromisoformat, str)
        )
    sql = (
        f"SELECT {COLUMNS} FROM approvals WHERE {' AND '.join(where)} "
        "ORDER BY requested_at, id LIMIT %s"
    )
    async with pool.connection() as conn:
        rows = await (await conn.execute(sql, [*params, limit + 1])).fetchall()
    page = [Approval.model_validate(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor([last.requested_at.isoformat(), last.id], query)
    return ApprovalPage(approvals=page, next_cursor=next_cursor)


async def due_for_expiry(pool: Pool, limit: int = 500) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= now() "
            "ORDER BY expires_at LIMIT %s",
            [limit],
        )
        return [row["id"] for row in await cur.fetchall()]


async def expire(pool: Pool, caller: Caller, approval_id: str) -> Approval | None:
    """Mark one approval expired if it still is pending and past due; None if it was not."""

    async def change(write: Write) -> _Changed:
        row: Row | None = await (await write.conn.execute(EXPIRE, [approval_id])).fetchone()
        if row is None:
            return _Changed(approval=None)
        approval = Approval.model_validate(row)
        write.emit(
            Topic.HUMAN_APPROVALS, "approval.expired", _subject(approval_id), _event_data(approval)
        )
        return _Changed(approval=approval)

    done = await perform_write(
        pool,
        source=SOURCE,
        tool="expire_approval",
        caller=caller,
        arguments={"approval_id": approval_id},
        idempotency_key=None,
        result_type=_Changed,
        change=change,
    )
    return done.approval


class _Changed(BaseModel):
    """What an expiry or a reminder changed: the approval, or None if it had nothing to do."""

    approval: Approval | None


def _action(approval: Approval) -> str:
    amount = f" for {approval.amount} {approval.currency}" if approval.amount is not None else ""
    return f"{approval.action_tool}{amount} on {approval.subject}"


DUE_FOR_REMINDER = """
    SELECT id FROM approvals
    WHERE status = 'pending' AND reminded_at IS NULL AND expires_at > now()
      AND expires_at <= now() + %s
    ORDER BY expires_at LIMIT %s
"""
REMIND = f"""
    UPDATE approvals SET reminded_at = now()
    WHERE id = %s AND status = 'pending' AND reminded_at IS NULL
    RETURNING {COLUMNS}
"""


async def due_for_reminder(pool: Pool, ahead: timedelta, limit: int = 500) -> list[str]:
    """Pending approvals expiring within ``ahead`` whose approvers were not reminded yet."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(DUE_FOR_REMINDER, [ahead, limit])).fetchall()
    return [row["id"] for row in rows]


async def remind(
    pool: Pool, caller: Caller, approval_id: str, approvers: list[str]
) -> Approval | None:
    """Tell ``approvers`` once that a pending approval is about to expire; None if it was
    decided, expired or reminded of already."""

    async def change(write: Write) -> _Changed:
        row: Row | None = await (await write.conn.execute(REMIND, [approval_id])).fetchone()
        if row is None:
            return _Changed(approval=None)
        approval = Approval.model_validate(row)
        write.notify(
            "approval.expiring",
            _subject(approval_id),
            approvers,
            f"Expiring soon: {_action(approval)}",
            f"{approval.requested_by}'s request to run {_action(approval)} expires at "
            f"{approval.expires_at:%Y-%m-%d %H:%M} UTC undecided, and then nothing is done.\n"
            f"Reason: {approval.reason}\nDecide with the decide_approval tool (approval_id "
            f"{approval.id}).",
            approval_id=approval.id,
        )
        return _Changed(approval=approval)

    done = await perform_write(
        pool,
        source=SOURCE,
        tool="remind_approvers",
        caller=caller,
        arguments={"approval_id": approval_id},
        idempotency_key=None,
        result_type=_Changed,
        change=change,
    )
    return done.approval
