"""``supportmesh notifications``: the dead letters of notification delivery, and sending them again.

    supportmesh notifications dead                  what could not be delivered, and why
    supportmesh notifications retry EVENT_ID ...    send these again (or --all of them)

Both work on the backends of the settings (configured, or those of a running `up` or
`backends` in the data directory) and leave the sending to the notifications worker.
"""

import asyncio
import sys
import uuid
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from servers.runtime.database import Pool, Row
    from servers.runtime.settings import Settings

notifications_app = typer.Typer(
    help="Notification delivery: list what could not be delivered, send it again.",
    no_args_is_help=True,
)


@notifications_app.command("dead")
def dead() -> None:
    """List dead-lettered notifications, oldest first.

    One line each: event id, kind, attempts, recipients and the last error. Send them again
    with `supportmesh notifications retry`.
    """
    from clients.cli import _settings
    from servers.runtime.backends import start_backends

    with start_backends(_settings("WARNING")) as ready:
        rows = asyncio.run(_dead(ready))
    if not rows:
        print("no dead-lettered notifications")
    for row in rows:
        print(
            f"{row['event_id']}  {row['kind'] or '-'}  attempts={row['attempts']}  "
            f"to={','.join(row['recipients']) or '-'}  error={row['last_error'] or '-'}"
        )


async def _dead(settings: "Settings") -> list["Row"]:
    from servers.notifications import store

    pool = await _open(settings)
    try:
        return await store.list_dead(pool)
    finally:
        await pool.close()


@notifications_app.command("retry")
def retry(
    event_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Event ids of dead-lettered notifications (from `dead`)."),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead-lettered notification.")] = False,
) -> None:
    """Send dead-lettered notifications again, with their attempts counted from zero.

    Prints the ids requeued; ids that are not dead-lettered are left alone, named on stderr,
    and make the exit code 1.
    """
    from clients.cli import _settings
    from servers.notifications.tasks import send_delivery
    from servers.runtime.backends import start_backends
    from servers.runtime.tasks import configure_tasks

    if every == bool(event_ids):
        raise typer.BadParameter("name event ids, or give --all (not both)", param_hint="EVENT_ID")
    try:
        wanted = None if every else [uuid.UUID(e) for e in event_ids or []]
    except ValueError as exc:
        raise typer.BadParameter(f"an event id is a UUID: {exc}", param_hint="EVENT_ID") from exc
    with start_backends(_settings("WARNING")) as ready:
        requeued = asyncio.run(_requeue(ready, wanted))
        configure_tasks(ready)
        for event_id in requeued:
            send_delivery(event_id, 0)
            print(event_id)
    left = sorted(str(e) for e in set(wanted or []) - set(requeued))
    if left:
        print(f"not dead-lettered, left alone: {', '.join(left)}", file=sys.stderr)
        raise typer.Exit(1)
    if not requeued:
        print("no dead-lettered notifications", file=sys.stderr)


async def _requeue(settings: "Settings", event_ids: list[uuid.UUID] | None) -> list[uuid.UUID]:
    from servers.notifications import store

    pool = await _open(settings)
    try:
        return await store.requeue_dead(pool, event_ids)
    finally:
        await pool.close()


async def _open(settings: "Settings") -> "Pool":
    from servers.notifications.handover import MIGRATIONS
    from servers.notifications.tasks import SCHEMA
    from servers.runtime.database import migrate_and_open

    assert settings.postgres_url, "start_backends fills in postgres_url"
    return await migrate_and_open(settings.postgres_url, SCHEMA, MIGRATIONS)
