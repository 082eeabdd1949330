"""Tickets in PostgreSQL: the reads and the writes the ticketing tools run.

Every write goes through ``perform_write`` (one transaction with its idempotency key, audit row
and events). The rules live in ``lifecycle.py`` (status) and ``sla.py`` (due times).
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from schemas.events import Topic
from schemas.ticketing import (
    Comment,
    NewTicket,
    SlaBreachNotice,
    SlaPolicy,
    Ticket,
    TicketChange,
    TicketDetail,
    TicketPage,
    TicketQuery,
    TicketStatus,
)
from servers.runtime.auth import Caller
from servers.runtime.database import Pool, Row
from servers.runtime.errors import InvalidArgument, NotFound
from servers.runtime.pages import decode_cursor, encode_cursor
from servers.runtime.writes import Write, perform_write
from servers.ticketing.lifecycle import check_transition, ensure_not_closed, path_to_closed
from servers.ticketing.sla import compute_sla

SOURCE = "ticketing"
COLUMNS = """id, subject, description, status, priority, channel, customer_id, requester_email,
    assignee, tags, created_at, updated_at, first_responded_at, solved_at, closed_at"""


def now() -> datetime:
    return datetime.now(UTC)


def _with_sla(row: Row, policy: SlaPolicy, at: datetime) -> Row:
    sla = compute_sla(
        policy, row["priority"], row["created_at"], row["first_responded_at"], row["solved_at"], at
    )
    return {**row, "sla": sla}


def to_ticket(row: Row, policy: SlaPolicy, at: datetime) -> Ticket:
    return Ticket.model_validate(_with_sla(row, policy, at))


# --- reads ------------------------------------------------------------------------------------

SELECT_TICKET = f"SELECT {COLUMNS} FROM tickets WHERE id = %s"
# A ticket with its comments and history in one round trip.
SELECT_DETAIL = f"""
    SELECT {COLUMNS},
        coalesce((SELECT json_agg(c ORDER BY c.id) FROM (
            SELECT id, ticket_id, author, body, public, created_at FROM comments
            WHERE ticket_id = t.id) c), '[]') AS comments,
        coalesce((SELECT json_agg(h ORDER BY h.id) FROM (
            SELECT id, from_status, to_status, actor, at FROM status_history
            WHERE ticket_id = t.id) h), '[]') AS history
    FROM tickets t WHERE id = %s
"""


async def _fetch_row(conn: AsyncConnection[Row], ticket_id: int, lock: bool = False) -> Row:
    sql = SELECT_TICKET + (" FOR UPDATE" if lock else "")
    row = await (await conn.execute(sql, [ticket_id])).fetchone()
    if row is None:
        raise NotFound("ticket_id", f"no ticket {ticket_id}")
    return row


async def _detail(conn: AsyncConnection[Row], ticket_id: int, policy: SlaPolicy) -> TicketDetail:
    row = await (await conn.execute(SELECT_DETAIL, [ticket_id])).fetchone()
    if row is None:
        raise NotFound("ticket_id", f"no ticket {ticket_id}")
    return TicketDetail.model_validate(_with_sla(row, policy, now()))


async def get_ticket(pool: Pool, policy: SlaPolicy, ticket_id: int) -> TicketDetail:
    async with pool.connection() as conn:
        return await _detail(conn, ticket_id, policy)


async def search_tickets(
    pool: Pool, policy: SlaPolicy, query: TicketQuery, cursor: str | None
) -> TicketPage:
    """Full-text and filtered search, newest first (or best match first when ``text`` is set)."""
    text = (query.text or "").strip()
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if query.status:
        where.append("status = ANY(%s)")
        params.append([s.value for s in query.status])
    if query.priority:
        where.append("priority = ANY(%s)")
        params.append([p.value for p in query.priority])
    for column in ("customer_id", "assignee"):
        if (value := getattr(query, column)) is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if query.tag is not None:
        where.append("tags @> ARRAY[%s]")
        params.append(query.tag)
    if query.created_after is not None:
        where.append("created_at >= %s")
        params.append(query.created_after)
    if query.created_before is not None:
        where.append("created_at < %s")
        params.append(query.created_before)

    if text:
        rank = "ts_rank_cd(search, websearch_to_tsquery('english', %s))"
        where.append("search @@ websearch_to_tsquery('english', %s)")
        params.append(text)
        sort_sql, sort_params = f"{rank}::float8", [text]
        order = f"{rank} DESC, id DESC"
        # Compared as float8, as the cursor carries it: exact, and no value a forged cursor
        # can hold overflows it (real would, past 3.4e38).
        after = f"({rank}::float8, id) < (%s::float8, %s)"
    else:
        sort_sql, sort_params = "created_at", []
        order = "created_at DESC, id DESC"
        after = "(created_at, id) < (%s, %s)"

    asked = query.model_dump(mode="json", exclude={"limit"})
    if cursor is not None:
        key = (float, int) if text else (datetime.fromisoformat, int)
        where.append(after)
        params += ([text] if text else []) + decode_cursor(cursor, asked, "search_tickets", key)

    sql = f"""
        SELECT {COLUMNS}, {sort_sql} AS sort_key FROM tickets
        WHERE {" AND ".join(where)}
        ORDER BY {order} LIMIT %s
    """
    order_params = [text] if text else []
    async with pool.connection() as conn:
        cur = await conn.execute(sql, [*sort_params, *params, *order_params, query.limit + 1])
        rows = await cur.fetchall()
    at = now()
    page, more = rows[: query.limit], len(rows) > query.limit
    next_cursor = None
    if more:
        last = page[-1]
        sort_key = last["sort_key"] if text else last["created_at"].isoformat()
        next_cursor = encode_cursor([sort_key, last["id"]], asked)
    return TicketPage(tickets=[to_ticket(r, policy, at) for r in page], next_cursor=next_cursor)


# --- writes -----------------------------------------------------------------------------------

INSERT_TICKET = """
    INSERT INTO tickets (subject, description, status, priority, channel, customer_id,
                         requester_email, assignee, tags, created_at, updated_at)
    VALUES (%s, %s, 'new', %s, %s, %s, %s, %s, %s, %s, %s)
    RETURNING id
"""
INSERT_HISTORY = """
    INSERT INTO status_history (ticket_id, from_status, to_status, actor, at)
    VALUES (%s, %s, %s, %s, %s)
"""
UPDATE_TICKET = """
    UPDATE tickets SET status = %s, priority = %s, assignee = %s, tags = %s, updated_at = %s,
                       first_responded_at = %s, solved_at = %s, closed_at = %s
    WHERE id = %s
"""
INSERT_COMMENT = """
    INSERT INTO comments (ticket_id, author, body, public, created_at) VALUES (%s, %s, %s, %s, %s)
    RETURNING id, ticket_id, author, body, public, created_at
"""


def _subject(ticket_id: int) -> str:
    return f"ticket/{ticket_id}"


async def create_ticket(
    pool: Pool,
    policy: SlaPolicy,
    caller: Caller,
    new: NewTicket,
    idempotency_key: str | None,
) -> TicketDetail:
    async def change(write: Write) -> TicketDetail:
        at = now()
        tags = sorted(set(new.tags))
        row = await (
            await write.conn.execute(
                INSERT_TICKET,
                [
                    new.subject,
                    new.description,
                    new.priority.value,
                    new.channel.value,
                    new.customer_id,
                    new.requester_email,
                    new.assignee,
                    tags,
                    at,
                    at,
                ],
            )
        ).fetchone()
        assert row is not None
        await write.conn.execute(INSERT_HISTORY, [row["id"], None, "new", caller.actor, at])
        data = {
            "ticket_id": row["id"],
            "subject": new.subject,
            "priority": new.priority.value,
            "channel": new.channel.value,
            "customer_id": new.customer_id,
            "tags": tags,
        }
        write.emit(Topic.CUSTOMER_REQUESTS, "ticket.created", _subject(row["id"]), data)
        write.emit(
            Topic.AGENT_ACTIONS,
            "ticket.created",
            _subject(row["id"]),
            {**data, "actor": caller.actor},
        )
        return await _detail(write.conn, row["id"], policy)

    return await perform_write(
        pool,
        source=SOURCE,
        tool="create_ticket",
        caller=caller,
        arguments=new.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        result_type=TicketDetail,
        change=change,
    )


def _apply_status(
    target: TicketStatus, policy: SlaPolicy, at: datetime, values: dict[str, Any]
) -> None:
    """Move ``values`` (a ticket row being edited) to ``target``, stamping the times it sets."""
    current = TicketStatus(values["status"])
    check_transition(
        current,
        target,
        solved_at=values["solved_at"],
        now=at,
        reopen_window=timedelta(hours=policy.reopen_window_hours),
    )
    values["status"] = target.value
    if target is TicketStatus.SOLVED:
        values["solved_at"] = at
    elif target is TicketStatus.CLOSED:
        values["closed_at"] = at
    elif current is TicketStatus.SOLVED:  # reopened: no longer resolved
        values["solved_at"] = None


async def _save(write: Write, values: dict[str, Any], at: datetime) -> None:
    """Write back the edited ``values`` of a ticket row (the caller reads the detail after)."""
    await write.conn.execute(
        UPDATE_TICKET,
        [
            values["status"],
            values["priority"],
            values["assignee"],
            values["tags"],
            at,
            values["first_responded_at"],
            values["solved_at"],
            values["closed_at"],
            values["id"],
        ],
    )


async def update_ticket(
    pool: Pool,
    policy: SlaPolicy,
    caller: Caller,
    ticket_id: int,
    change: TicketChange,
    idempotency_key: str | None,
) -> TicketDetail:
    if (
        change.status is None
        and change.priority is None
        and change.assignee is None
        and not change.unassign
        and not change.add_tags
        and not change.remove_tags
    ):
        raise InvalidArgument(None, "nothing to update: give status, priority, assignee or tags")
    if change.unassign and change.assignee is not None:
        raise InvalidArgument("unassign", "give either assignee or unassign, not both")
    if change.status is TicketStatus.CLOSED:
        raise InvalidArgument("status", "use close_ticket to close a ticket")

    async def apply(write: Write) -> TicketDetail:
        at = now()
        row = await _fetch_row(write.conn, ticket_id, lock=True)
        values = dict(row)
        ensure_not_closed(TicketStatus(row["status"]))
        if change.status is not None and change.status.value != row["status"]:
            _apply_status(change.status, policy, at, values)
            await write.conn.execute(
                INSERT_HISTORY, [ticket_id, row["status"], values["status"], caller.actor, at]
            )
        if change.priority is not None:
            values["priority"] = change.priority.value
        if change.assignee is not None or change.unassign:
            values["assignee"] = change.assignee
        tags = (set(row["tags"]) | set(change.add_tags)) - set(change.remove_tags)
        values["tags"] = sorted(tags)
        changed = {
            k: [row[k], values[k]]
            for k in ("status", "priority", "assignee", "tags")
            if row[k] != values[k]
        }
        if changed:
            await _save(write, values, at)
            write.emit(
                Topic.AGENT_ACTIONS,
                "ticket.updated",
                _subject(ticket_id),
                {"ticket_id": ticket_id, "changes": changed, "actor": caller.actor},
            )
        return await _detail(write.conn, row["id"], policy)

    return await perform_write(
        pool,
        source=SOURCE,
        tool="update_ticket",
        caller=caller,
        arguments={"ticket_id": ticket_id, **change.model_dump(mode="json")},
        idempotency_key=idempotency_key,
        result_type=TicketDetail,
        change=apply,
    )


async def add_comment(
    pool: Pool,
    caller: Caller,
    ticket_id: int,
    body: str,
    public: bool,
    idempotency_key: str | None,
) -> Comment:
    async def apply(write: Write) -> Comment:
        at = now()
        row = await _fetch_row(write.conn, ticket_id, lock=True)
        ensure_not_closed(TicketStatus(row["status"]))
        cur = await write.conn.execute(INSERT_COMMENT, [ticket_id, caller.actor, body, public, at])
        comment = Comment.model_validate(await cur.fetchone())
        if public and row["first_responded_at"] is None:
            await write.conn.execute(
                "UPDATE tickets SET first_responded_at = %s, updated_at = %s WHERE id = %s",
                [at, at, ticket_id],
            )
        else:
            await write.conn.execute(
                "UPDATE tickets SET updated_at = %s WHERE id = %s", [at, ticket_id]
            )
        write.emit(
            Topic.AGENT_ACTIONS,
            "ticket.commented",
            _subject(ticket_id),
            {
                "ticket_id": ticket_id,
                "comment_id": comment.id,
                "public": public,
                "actor": caller.actor,
            },
        )
        if public and row["requester_email"]:
            write.notify(
                "ticket.reply",
                _subject(ticket_id),
                [row["requester_email"]],
                f"Re: {row['subject']} [ticket #{ticket_id}]",
                body,
                ticket_id=ticket_id,
            )
        return comment

    return await perform_write(
        pool,
        source=SOURCE,
        tool="add_comment",
        caller=caller,
        arguments={"ticket_id": ticket_id, "body": body, "public": public},
        idempotency_key=idempotency_key,
        result_type=Comment,
        change=apply,
    )


async def close_ticket(
    pool: Pool,
    policy: SlaPolicy,
    caller: Caller,
    ticket_id: int,
    idempotency_key: str | None,
) -> TicketDetail:
    async def apply(write: Write) -> TicketDetail:
        at = now()
        row = await _fetch_row(write.conn, ticket_id, lock=True)
        values = dict(row)
        for target in path_to_closed(TicketStatus(row["status"])):
            before = values["status"]
            _apply_status(target, policy, at, values)
            await write.conn.execute(
                INSERT_HISTORY, [ticket_id, before, target.value, caller.actor, at]
            )
        await _save(write, values, at)
        write.emit(
            Topic.AGENT_ACTIONS,
            "ticket.closed",
            _subject(ticket_id),
            {"ticket_id": ticket_id, "actor": caller.actor},
        )
        return await _detail(write.conn, row["id"], policy)

    return await perform_write(
        pool,
        source=SOURCE,
        tool="close_ticket",
        caller=caller,
        arguments={"ticket_id": ticket_id},
        idempotency_key=idempotency_key,
        result_type=TicketDetail,
        change=apply,
    )


# --- SLA breaches -----------------------------------------------------------------------------

# Clocks past due and not met in time, not yet announced. Each priority's targets come in as
# arrays, so that a changed policy applies at the next scan.
UNANNOUNCED_BREACHES = """
    WITH targets (priority, first_response, resolution) AS (
        SELECT * FROM unnest(%s::text[], %s::int[], %s::int[])
    )
    SELECT t.id AS ticket_id, c.clock, c.due_at
    FROM tickets t JOIN targets g USING (priority)
    CROSS JOIN LATERAL (VALUES
        ('first_response', t.created_at + g.first_response * interval '1 minute',
         t.first_responded_at),
        ('resolution', t.created_at + g.resolution * interval '1 minute', t.solved_at)
    ) AS c (clock, due_at, met_at)
    WHERE coalesce(c.met_at, now()) > c.due_at
      AND NOT EXISTS (SELECT 1 FROM sla_breaches b WHERE b.ticket_id = t.id AND b.clock = c.clock)
    ORDER BY c.due_at LIMIT %s
"""
ANNOUNCE_BREACH = """
    INSERT INTO sla_breaches (ticket_id, clock, due_at, breached_at) VALUES (%s, %s, %s, %s)
    ON CONFLICT DO NOTHING
"""


async def unannounced_breaches(
    pool: Pool, policy: SlaPolicy, limit: int = 500
) -> list[tuple[int, str, datetime]]:
    """(ticket, clock, due time) of breached SLA clocks not yet announced, earliest due first."""
    priorities = list(policy.targets)
    params = [
        [p.value for p in priorities],
        [policy.targets[p].first_response_minutes for p in priorities],
        [policy.targets[p].resolution_minutes for p in priorities],
        limit,
    ]
    async with pool.connection() as conn:
        rows = await (await conn.execute(UNANNOUNCED_BREACHES, params)).fetchall()
    return [(r["ticket_id"], r["clock"], r["due_at"]) for r in rows]


async def announce_breach(
    pool: Pool,
    caller: Caller,
    ticket_id: int,
    clock: str,
    due_at: datetime,
    team: str,
) -> SlaBreachNotice:
    """Record a breached clock once (the idempotency key is the ticket and clock), with a
    ``ticket.sla_breached`` event and a notification to the assignee (or ``team`` when the
    assignee is not an address)."""

    async def apply(write: Write) -> SlaBreachNotice:
        at = now()
        row = await _fetch_row(write.conn, ticket_id)
        await write.conn.execute(ANNOUNCE_BREACH, [ticket_id, clock, due_at, at])
        assignee = row["assignee"]
        notice = SlaBreachNotice(
            ticket_id=ticket_id,
            clock=clock,
            priority=row["priority"],
            due_at=due_at,
            breached_at=at,
            assignee=assignee,
        )
        subject = _subject(ticket_id)
        write.emit(
            Topic.AGENT_ACTIONS, "ticket.sla_breached", subject, notice.model_dump(mode="json")
        )
        what = clock.replace("_", " ")
        write.notify(
            "ticket.sla_breached",
            subject,
            [assignee if assignee and "@" in assignee else team],
            f"SLA breached: {what} on ticket #{ticket_id} ({row['priority']})",
            f'Ticket #{ticket_id} "{row["subject"]}" missed its {what} target, due '
            f"{due_at:%Y-%m-%d %H:%M} UTC. Assignee: {assignee or 'nobody'}.",
            ticket_id=ticket_id,
        )
        return notice

    return await perform_write(
        pool,
        source=SOURCE,
        tool="scan_sla",
        caller=caller,
        arguments={"ticket_id": ticket_id, "clock": clock},
        idempotency_key=f"{ticket_id}:{clock}",
        result_type=SlaBreachNotice,
        change=apply,
    )
