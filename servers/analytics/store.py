"""Analytics from events: applying each event once to the aggregates, and the reports over them.

``apply_events`` runs in the transaction of one consumed batch. Each event is recorded in
``consumed_events`` with the change it makes, so a redelivered or replayed event changes
nothing. Events about one ticket or one approval arrive in order (one Kafka key, one partition);
the tables are upserted so that an event about something never seen (a consumer that started
late) still counts.

``rebuild`` empties every table and replays the servers' outboxes, the durable record of every
event (DESIGN §5), in one transaction; the live consumer waits for it, then finds its events
already applied. It is the one place analytics reads another schema, and only its outbox.
"""

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from schemas.analytics import (
    ActionField,
    ActionKind,
    ActionRow,
    AgentActions,
    ApprovalField,
    ApprovalRow,
    ApprovalStats,
    ApprovalTotals,
    Breach,
    BreachRow,
    Bucket,
    Dashboard,
    Durations,
    ResolutionTimes,
    SlaBreaches,
    TicketField,
    TicketVolume,
    TimesRow,
    VolumeRow,
    VolumeTotals,
)
from schemas.events import Event, Topic
from servers.runtime.database import Pool, Row
from servers.runtime.errors import InvalidArgument

log = logging.getLogger(__name__)
Conn = psycopg.AsyncConnection[Row]
ORCHESTRATOR = "orchestrator"  # the source of the orchestrator service's progress events

# The consumer's batches share this lock; a rebuild takes it alone.
APPLYING = "SELECT pg_advisory_xact_lock_shared(hashtextextended('supportmesh:analytics', 0))"
REBUILDING = "SELECT pg_advisory_xact_lock(hashtextextended('supportmesh:analytics', 0))"
REMEMBER = """
    INSERT INTO consumed_events (event_id, topic, type, source, at) VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT DO NOTHING
"""

# --- applying events ----------------------------------------------------------------------------

KNOW_TICKET = "INSERT INTO tickets (ticket_id) VALUES (%s) ON CONFLICT DO NOTHING"
TICKET_CREATED = """
    INSERT INTO tickets (ticket_id, created_at, channel, priority, category)
    VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (ticket_id) DO UPDATE SET created_at = excluded.created_at,
        channel = excluded.channel, priority = excluded.priority,
        category = coalesce(excluded.category, tickets.category)
"""
HAPPENED = (
    "INSERT INTO ticket_happenings (event_id, ticket_id, happening, at) VALUES (%s, %s, %s, %s)"
)
SOLVED = "UPDATE tickets SET solved_at = %s WHERE ticket_id = %s"
REOPENED = "UPDATE tickets SET solved_at = NULL, reopens = reopens + 1 WHERE ticket_id = %s"
SOLVED_IF_NOT = (
    "UPDATE tickets SET solved_at = %s WHERE ticket_id = %s AND solved_at IS NULL RETURNING 1"
)
SET_PRIORITY = "UPDATE tickets SET priority = %s WHERE ticket_id = %s"
SET_CATEGORY = "UPDATE tickets SET category = %s WHERE ticket_id = %s"
FIRST_RESPONSE = """
    UPDATE tickets SET first_response_at = %s WHERE ticket_id = %s AND first_response_at IS NULL
"""
BREACHED = """
    INSERT INTO sla_breaches (ticket_id, clock, priority, due_at, breached_at, assignee)
    VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
WRITE = """
    INSERT INTO writes (event_id, at, source, type, tool, actor, outcome)
    VALUES (%s, %s, %s, %s, %s, %s, 'ok')
"""
CALLS = """
    INSERT INTO tool_calls (event_id, at, server, tool, outcome, calls)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT DO NOTHING
"""
BACKLOG = """
    INSERT INTO outbox_backlog (server, at, unsent) VALUES (%s, %s, %s)
    ON CONFLICT (server) DO UPDATE SET at = excluded.at, unsent = excluded.unsent
    WHERE outbox_backlog.at < excluded.at
"""
APPROVAL_REQUESTED = """
    INSERT INTO approvals (approval_id, action_tool, requested_by, requested_at, status)
    VALUES (%s, %s, %s, %s, 'pending')
    ON CONFLICT (approval_id) DO UPDATE SET action_tool = excluded.action_tool,
        requested_by = excluded.requested_by, requested_at = excluded.requested_at
"""
APPROVAL_ENDED = """
    INSERT INTO approvals (approval_id, action_tool, requested_by, status, ended_at)
    VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (approval_id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at
"""


def _category(tags: Any) -> str | None:
    """The category the orchestrator tags a ticket with (``category:refund``), if any."""
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, str) and tag.startswith("category:"):
                return tag.removeprefix("category:") or None
    return None


def _ticket_id(event: Event) -> int | None:
    ticket_id = event.data.get("ticket_id")
    return ticket_id if isinstance(ticket_id, int) and not isinstance(ticket_id, bool) else None


async def _apply_ticket(conn: Conn, event: Event, ticket_id: int) -> None:
    data, at = event.data, event.time
    if event.type == "ticket.created":
        await conn.execute(
            TICKET_CREATED,
            [ticket_id, at, data.get("channel"), data.get("priority"), _category(data.get("tags"))],
        )
        await conn.execute(HAPPENED, [event.id, ticket_id, "created", at])
        return
    await conn.execute(KNOW_TICKET, [ticket_id])
    if event.type == "ticket.updated":
        changes = data.get("changes") or {}
        before, after = changes.get("status") or [None, None]
        if after == "solved":
            await conn.execute(SOLVED, [at, ticket_id])
            await conn.execute(HAPPENED, [event.id, ticket_id, "solved", at])
        elif before == "solved" and after == "open":
            await conn.execute(REOPENED, [ticket_id])
            await conn.execute(HAPPENED, [event.id, ticket_id, "reopened", at])
        if priority := (changes.get("priority") or [None, None])[1]:
            await conn.execute(SET_PRIORITY, [priority, ticket_id])
        if "tags" in changes and (category := _category((changes["tags"] or [None, None])[1])):
            await conn.execute(SET_CATEGORY, [category, ticket_id])
    elif event.type == "ticket.commented" and data.get("public"):
        await conn.execute(FIRST_RESPONSE, [at, ticket_id])
    elif event.type == "ticket.closed":
        # Closing passes through solved; a ticket closed before it was solved is solved now.
        if await (await conn.execute(SOLVED_IF_NOT, [at, ticket_id])).fetchone():
            await conn.execute(HAPPENED, [event.id, ticket_id, "solved", at])
    elif event.type == "ticket.sla_breached":
        await conn.execute(
            BREACHED,
            [
                ticket_id,
                data.get("clock"),
                data.get("priority"),
                data.get("due_at"),
                at,
                data.get("assignee"),
            ],
        )


async def _apply_approval(conn: Conn, event: Event) -> None:
    data = event.data
    approval_id = data.get("approval_id")
    if not isinstance(approval_id, str):
        return
    who = [data.get("action_tool"), data.get("requested_by")]
    if event.type == "approval.requested":
        await conn.execute(APPROVAL_REQUESTED, [approval_id, *who, event.time])
    elif event.type in ("approval.decided", "approval.expired"):
        status = data.get("status") or event.type.removeprefix("approval.")
        await conn.execute(APPROVAL_ENDED, [approval_id, *who, status, event.time])


async def _apply_sample(conn: Conn, event: Event) -> None:
    data = event.data
    server = str(data.get("server") or event.source)
    for call in data.get("tools") or []:
        if isinstance(call, dict) and isinstance(call.get("calls"), int):
            await conn.execute(
                CALLS,
                [
                    event.id,
                    event.time,
                    server,
                    call.get("tool"),
                    call.get("outcome"),
                    call["calls"],
                ],
            )
    if isinstance(unsent := data.get("outbox_unsent"), int):
        await conn.execute(BACKLOG, [server, event.time, unsent])


async def apply_event(conn: Conn, topic: str, event: Event) -> bool:
    """Apply one event, once; False if it was applied before. Run inside a transaction."""
    remember = [event.id, topic, event.type, event.source, event.time]
    if (await conn.execute(REMEMBER, remember)).rowcount == 0:
        return False
    data = event.data
    # A server's write names its tool; the orchestrator's own events (its progress: nodes, tool
    # calls it made, runs) are not writes, and the writes it made are counted by the servers.
    written = topic in (Topic.AGENT_ACTIONS, Topic.HUMAN_APPROVALS) and event.source != ORCHESTRATOR
    if written and isinstance(data.get("tool"), str):
        actor = data.get("actor")
        await conn.execute(
            WRITE, [event.id, event.time, event.source, event.type, data["tool"], actor]
        )
    if topic == Topic.AGENT_ACTIONS and event.type.startswith("ticket."):
        if (ticket_id := _ticket_id(event)) is not None:
            await _apply_ticket(conn, event, ticket_id)
    elif topic == Topic.HUMAN_APPROVALS:
        await _apply_approval(conn, event)
    elif topic == Topic.SYSTEM_ANALYTICS and event.type == "metrics.sampled":
        await _apply_sample(conn, event)
    return True


# What an event that cannot be applied raises (a number out of range, data of the wrong shape):
# it is skipped, logged and counted, and never stops the consumer.
UNAPPLIABLE = (psycopg.DataError, psycopg.IntegrityError, ValueError, TypeError, AttributeError)


async def apply_events(pool: Pool, events: Iterable[tuple[str, Event]]) -> list[str]:
    """Apply a consumed batch in one transaction; for each event ``applied``, ``duplicate`` or
    ``skipped`` (it cannot be applied: logged, and the rest of the batch still is)."""
    batch = list(events)
    try:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(APPLYING)
            return [_result(await apply_event(conn, t, e)) for t, e in batch]
    except UNAPPLIABLE:
        pass  # one event spoils the batch: apply them one at a time
    results = []
    async with pool.connection() as conn:
        for topic, event in batch:
            try:
                async with conn.transaction():
                    await conn.execute(APPLYING)
                    results.append(_result(await apply_event(conn, topic, event)))
            except UNAPPLIABLE as exc:
                log.warning(
                    "skipped event %s (%s from %s): %r", event.id, event.type, event.source, exc
                )
                results.append("skipped")
    return results


def _result(new: bool) -> str:
    return "applied" if new else "duplicate"


# --- rebuilding ---------------------------------------------------------------------------------

AGGREGATES = (
    "consumed_events, tickets, ticket_happenings, sla_breaches, writes, tool_calls, "
    "outbox_backlog, approvals"
)
OUTBOXES = """
    SELECT table_schema FROM information_schema.tables
    WHERE table_name = 'outbox' ORDER BY table_schema
"""
REPLAY = "SELECT topic, event::text AS event FROM {}.outbox ORDER BY seq"


async def rebuild(pool: Pool) -> dict[str, int]:
    """Empty the aggregates and replay every server's outbox into them, in one transaction;
    returns how many events each schema's outbox gave."""
    replayed: dict[str, int] = {}
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(REBUILDING)
        await conn.execute(f"TRUNCATE {AGGREGATES}")
        schemas = [r["table_schema"] for r in await (await conn.execute(OUTBOXES)).fetchall()]
        for schema in schemas:
            query = sql.SQL(REPLAY).format(sql.Identifier(schema))
            replayed[schema] = 0
            async with conn.cursor(name=f"replay_{schema}") as rows:
                await rows.execute(query)
                async for row in rows:
                    await apply_event(conn, row["topic"], Event.model_validate_json(row["event"]))
                    replayed[schema] += 1
    return replayed


# --- reports ------------------------------------------------------------------------------------

MAX_BUCKETS = 2000
MAX_ROWS = 10_000
SPANS = {Bucket.HOUR: timedelta(hours=1), Bucket.DAY: timedelta(days=1), Bucket.WEEK: timedelta(7)}
TICKET_GROUPS = {f: f"t.{f.value}" for f in TicketField}
APPROVAL_GROUPS = {f: f.value for f in ApprovalField}
WRITE_GROUPS = {
    ActionField.TOOL: "tool",
    ActionField.ACTOR: "actor",
    ActionField.OUTCOME: "outcome",
    ActionField.SOURCE: "source",
}
CALL_GROUPS = {
    ActionField.TOOL: "tool",
    ActionField.OUTCOME: "outcome",
    ActionField.SOURCE: "server",
}


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def window(
    since: datetime | None, until: datetime | None, bucket: Bucket
) -> tuple[datetime, datetime]:
    """The window ``[since, until)``: until defaults to now, since to a day before until."""
    end = _utc(until) if until else datetime.now(UTC)
    start = _utc(since) if since else end - timedelta(days=1)
    if start >= end:
        raise InvalidArgument("since", "must be before until")
    buckets = (end - start) / SPANS[bucket]
    if buckets > MAX_BUCKETS:
        raise InvalidArgument(
            "bucket",
            f"{buckets:.0f} {bucket.value}s in the window, at most {MAX_BUCKETS}: choose a "
            "larger bucket or a shorter window",
        )
    return start, end


def _keys(at: str, groups: list[str], columns: dict[Any, str], overall: bool) -> tuple[str, str]:
    """The select-list head (bucket start, then each group as g_<field>) and the GROUP BY."""
    if overall:
        return "NULL::timestamptz AS bucket_start", ""
    chosen = [f"date_trunc(%(bucket)s, {at}, 'UTC') AS bucket_start"]
    chosen += [f"{columns[g]} AS g_{g}" for g in groups]
    return ", ".join(chosen), "GROUP BY " + ", ".join(str(i + 1) for i in range(len(chosen)))


def _group(row: Row, groups: list[str]) -> dict[str, str | None]:
    return {g: None if row[f"g_{g}"] is None else str(row[f"g_{g}"]) for g in groups}


def _unique(group_by: list[Any]) -> list[str]:
    """The grouped fields' names, each once, in the order given."""
    return list(dict.fromkeys(g.value for g in group_by))


async def _rows(pool: Pool, query: str, params: dict[str, Any]) -> list[Row]:
    async with pool.connection() as conn:
        return await (await conn.execute(f"{query} ORDER BY 1 LIMIT {MAX_ROWS}", params)).fetchall()


VOLUME = """
    SELECT {keys},
        count(*) FILTER (WHERE h.happening = 'created') AS created,
        count(*) FILTER (WHERE h.happening = 'solved') AS solved,
        count(*) FILTER (WHERE h.happening = 'reopened') AS reopened
    FROM ticket_happenings h JOIN tickets t USING (ticket_id)
    WHERE h.at >= %(since)s AND h.at < %(until)s {group_by}
"""


async def ticket_volume(
    pool: Pool,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket,
    group_by: list[TicketField],
) -> TicketVolume:
    start, end = window(since, until, bucket)
    groups = _unique(group_by)
    params = {"since": start, "until": end, "bucket": bucket.value}
    keys, grouping = _keys("h.at", groups, TICKET_GROUPS, overall=False)
    rows = await _rows(pool, VOLUME.format(keys=keys, group_by=grouping), params)
    counted = [
        VolumeRow(
            bucket_start=r["bucket_start"],
            group=_group(r, groups),
            created=r["created"],
            solved=r["solved"],
            reopened=r["reopened"],
        )
        for r in rows
    ]
    totals = VolumeTotals(
        created=sum(r.created for r in counted),
        solved=sum(r.solved for r in counted),
        reopened=sum(r.reopened for r in counted),
    )
    return TicketVolume(
        since=start, until=end, bucket=bucket, group_by=groups, rows=counted, totals=totals
    )


DURATIONS = """
    SELECT {keys}, count(*) AS n,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,
        percentile_cont(0.9) WITHIN GROUP (ORDER BY s) AS p90,
        max(s) AS worst
    FROM (SELECT t.*, extract(epoch FROM t.{end} - t.created_at)::float8 AS s FROM tickets t
          WHERE t.{end} >= %(since)s AND t.{end} < %(until)s AND t.created_at IS NOT NULL) t
    {group_by}
"""
NO_DURATIONS = Durations(count=0, p50_seconds=None, p90_seconds=None, max_seconds=None)


def _seconds(value: float | None) -> float | None:
    """Seconds to the millisecond: what a reader can use, and equal however often computed."""
    return None if value is None else round(value, 3)


def _durations(row: Row) -> Durations:
    return Durations(
        count=row["n"],
        p50_seconds=_seconds(row["p50"]),
        p90_seconds=_seconds(row["p90"]),
        max_seconds=_seconds(row["worst"]),
    )


async def _times(
    pool: Pool, end: str, groups: list[str], params: dict[str, Any], overall: bool
) -> list[Row]:
    keys, grouping = _keys(f"t.{end}", groups, TICKET_GROUPS, overall)
    return await _rows(pool, DURATIONS.format(keys=keys, end=end, group_by=grouping), params)


async def resolution_times(
    pool: Pool,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket,
    group_by: list[TicketField],
) -> ResolutionTimes:
    start, end = window(since, until, bucket)
    groups = _unique(group_by)
    params = {"since": start, "until": end, "bucket": bucket.value}
    merged: dict[tuple[Any, ...], TimesRow] = {}
    for clock in ("first_response", "resolution"):
        column = "first_response_at" if clock == "first_response" else "solved_at"
        for r in await _times(pool, column, groups, params, overall=False):
            group = _group(r, groups)
            key = (r["bucket_start"], *group.values())
            row = merged.setdefault(
                key,
                TimesRow(
                    bucket_start=r["bucket_start"],
                    group=group,
                    first_response=NO_DURATIONS,
                    resolution=NO_DURATIONS,
                ),
            )
            setattr(row, clock, _durations(r))
    first = await _times(pool, "first_response_at", [], params, overall=True)
    solved = await _times(pool, "solved_at", [], params, overall=True)
    return ResolutionTimes(
        since=start,
        until=end,
        bucket=bucket,
        group_by=groups,
        rows=sorted(merged.values(), key=lambda r: (r.bucket_start, *map(str, r.group.values()))),
        first_response=_durations(first[0]),
        resolution=_durations(solved[0]),
    )


BREACH_COUNTS = """
    SELECT date_trunc(%(bucket)s, breached_at, 'UTC') AS bucket_start, priority, clock,
        count(*) AS n
    FROM sla_breaches
    WHERE breached_at >= %(since)s AND breached_at < %(until)s
      AND (%(priority)s::text IS NULL OR priority = %(priority)s)
    GROUP BY 1, 2, 3
"""
BREACH_LIST = """
    SELECT * FROM sla_breaches
    WHERE breached_at >= %(since)s AND breached_at < %(until)s
      AND (%(priority)s::text IS NULL OR priority = %(priority)s)
    ORDER BY breached_at DESC, ticket_id DESC, clock LIMIT %(limit)s
"""


async def sla_breaches(
    pool: Pool,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket,
    priority: str | None,
    limit: int,
) -> SlaBreaches:
    start, end = window(since, until, bucket)
    params = {
        "since": start,
        "until": end,
        "bucket": bucket.value,
        "priority": priority,
        "limit": limit,
    }
    counts = await _rows(pool, BREACH_COUNTS, params)
    async with pool.connection() as conn:
        listed = await (await conn.execute(BREACH_LIST, params)).fetchall()
    rows = [
        BreachRow(
            bucket_start=r["bucket_start"], priority=r["priority"], clock=r["clock"], count=r["n"]
        )
        for r in counts
    ]
    return SlaBreaches(
        since=start,
        until=end,
        bucket=bucket,
        group_by=["priority", "clock"],
        rows=rows,
        total=sum(r.count for r in rows),
        breaches=[Breach.model_validate(r) for r in listed],
    )


WRITES = """
    SELECT {keys}, count(*) AS n FROM writes
    WHERE at >= %(since)s AND at < %(until)s {group_by}
"""
TOOL_CALLS = """
    SELECT {keys}, sum(calls)::bigint AS n FROM tool_calls
    WHERE at >= %(since)s AND at < %(until)s {group_by}
"""


async def agent_actions(
    pool: Pool,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket,
    kind: ActionKind,
    group_by: list[ActionField],
) -> AgentActions:
    start, end = window(since, until, bucket)
    groups = _unique(group_by)
    columns = WRITE_GROUPS if kind is ActionKind.WRITES else CALL_GROUPS
    if kind is ActionKind.CALLS and ActionField.ACTOR.value in groups:
        raise InvalidArgument("group_by", "calls (metrics samples) are not counted by actor")
    query = WRITES if kind is ActionKind.WRITES else TOOL_CALLS
    keys, grouping = _keys("at", groups, {f.value: c for f, c in columns.items()}, overall=False)
    params = {"since": start, "until": end, "bucket": bucket.value}
    rows = [
        ActionRow(bucket_start=r["bucket_start"], group=_group(r, groups), count=r["n"])
        for r in await _rows(pool, query.format(keys=keys, group_by=grouping), params)
    ]
    return AgentActions(
        since=start,
        until=end,
        bucket=bucket,
        group_by=groups,
        kind=kind,
        rows=rows,
        total=sum(r.count for r in rows),
    )


APPROVAL_HAPPENINGS = """
    WITH happened AS (
        SELECT requested_at AS at, 'requested' AS what, NULL::float8 AS latency,
            action_tool, requested_by
        FROM approvals WHERE requested_at >= %(since)s AND requested_at < %(until)s
        UNION ALL
        SELECT ended_at, status,
            CASE WHEN status IN ('approved', 'rejected')
                 THEN extract(epoch FROM ended_at - requested_at)::float8 END,
            action_tool, requested_by
        FROM approvals WHERE ended_at >= %(since)s AND ended_at < %(until)s
    )
    SELECT {keys},
        count(*) FILTER (WHERE what = 'requested') AS requested,
        count(*) FILTER (WHERE what = 'approved') AS approved,
        count(*) FILTER (WHERE what = 'rejected') AS rejected,
        count(*) FILTER (WHERE what = 'expired') AS expired,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) AS p50,
        percentile_cont(0.9) WITHIN GROUP (ORDER BY latency) AS p90
    FROM happened {group_by}
"""


def _approval_counts(row: Row) -> dict[str, Any]:
    return {
        "requested": row["requested"],
        "approved": row["approved"],
        "rejected": row["rejected"],
        "expired": row["expired"],
        "decision_p50_seconds": _seconds(row["p50"]),
        "decision_p90_seconds": _seconds(row["p90"]),
    }


async def approval_stats(
    pool: Pool,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket,
    group_by: list[ApprovalField],
) -> ApprovalStats:
    start, end = window(since, until, bucket)
    groups = _unique(group_by)
    params = {"since": start, "until": end, "bucket": bucket.value}
    keys, grouping = _keys("at", groups, APPROVAL_GROUPS, overall=False)
    rows = await _rows(pool, APPROVAL_HAPPENINGS.format(keys=keys, group_by=grouping), params)
    keys, grouping = _keys("at", [], APPROVAL_GROUPS, overall=True)
    total = await _rows(pool, APPROVAL_HAPPENINGS.format(keys=keys, group_by=grouping), params)
    return ApprovalStats(
        since=start,
        until=end,
        bucket=bucket,
        group_by=groups,
        rows=[
            ApprovalRow(
                bucket_start=r["bucket_start"], group=_group(r, groups), **_approval_counts(r)
            )
            for r in rows
        ],
        totals=ApprovalTotals(**_approval_counts(total[0])),
    )


PENDING_APPROVALS = "SELECT count(*) AS n FROM approvals WHERE status = 'pending'"
BY_TOPIC = """
    SELECT topic AS key, count(*) AS n FROM consumed_events
    WHERE at >= %(since)s AND at < %(until)s GROUP BY topic
"""
CALLS_BY_OUTCOME = """
    SELECT outcome AS key, sum(calls)::bigint AS n FROM tool_calls
    WHERE at >= %(since)s AND at < %(until)s GROUP BY outcome
"""
WRITES_BY_TOOL = """
    SELECT tool AS key, count(*) AS n FROM writes
    WHERE at >= %(since)s AND at < %(until)s GROUP BY tool ORDER BY n DESC LIMIT 20
"""
BACKLOGS = "SELECT server AS key, unsent AS n FROM outbox_backlog"
BREACHES_BY_CLOCK = """
    SELECT clock AS key, count(*) AS n FROM sla_breaches
    WHERE breached_at >= %(since)s AND breached_at < %(until)s GROUP BY clock
"""
LAST_EVENT = "SELECT max(at) AS at FROM consumed_events"


async def pending_approvals(pool: Pool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(PENDING_APPROVALS)).fetchone()
    return int(row["n"]) if row else 0


async def dashboard(pool: Pool, now: datetime | None = None) -> Dashboard:
    """The last 24 hours: ticket volume and times, breaches, approvals, actions, events."""
    until = _utc(now) if now else datetime.now(UTC)
    since = until - timedelta(days=1)
    volume = await ticket_volume(pool, since, until, Bucket.DAY, [])
    times = await resolution_times(pool, since, until, Bucket.DAY, [])
    approvals = await approval_stats(pool, since, until, Bucket.DAY, [])
    params = {"since": since, "until": until}
    async with pool.connection() as conn:

        async def counts(query: str) -> dict[str, int]:
            rows = await (await conn.execute(query, params)).fetchall()
            return {str(r["key"]): int(r["n"]) for r in rows}

        pending = await (await conn.execute(PENDING_APPROVALS)).fetchone()
        last = await (await conn.execute(LAST_EVENT)).fetchone()
        return Dashboard(
            since=since,
            until=until,
            tickets=volume.totals,
            first_response=times.first_response,
            resolution=times.resolution,
            sla_breaches=await counts(BREACHES_BY_CLOCK),
            approvals=approvals.totals,
            approvals_pending=pending["n"] if pending else 0,
            writes_by_tool=await counts(WRITES_BY_TOOL),
            calls=await counts(CALLS_BY_OUTCOME),
            events_by_topic=await counts(BY_TOPIC),
            outbox_backlog=await counts(BACKLOGS),
            last_event_at=last["at"] if last else None,
        )
