"""The ticket state machine: new → open → pending → solved → closed, with reopen rules.

    new ──► open ◄──► pending
     │       │          │
     └───────┴──► solved ◄┘
                  │   ▲
          closed ◄┘   └─ reopen to open: only within the reopen window after solving

- ``new`` is only ever the first status; nothing moves back to it.
- ``closed`` is final: the ticket is read-only (a follow-up is a new ticket).
- Closing passes through ``solved``, so every closed ticket was solved first.
"""

from datetime import datetime, timedelta

from schemas.ticketing import TicketStatus as S
from servers.runtime.errors import Conflict

ALLOWED: dict[S, frozenset[S]] = {
    S.NEW: frozenset({S.OPEN, S.PENDING, S.SOLVED}),
    S.OPEN: frozenset({S.PENDING, S.SOLVED}),
    S.PENDING: frozenset({S.OPEN, S.SOLVED}),
    S.SOLVED: frozenset({S.OPEN, S.CLOSED}),
    S.CLOSED: frozenset(),
}


def ensure_not_closed(current: S) -> None:
    """A closed ticket takes no change at all: no status, field or comment."""
    if current is S.CLOSED:
        raise Conflict("ticket_id", "the ticket is closed; open a follow-up ticket instead")


def check_transition(
    current: S, target: S, *, solved_at: datetime | None, now: datetime, reopen_window: timedelta
) -> None:
    """Raise ``Conflict`` unless ``current → target`` is legal now."""
    ensure_not_closed(current)
    if target not in ALLOWED[current]:
        raise Conflict("status", f"a {current} ticket cannot move to {target}")
    reopening = current is S.SOLVED and target is S.OPEN
    if reopening and (solved_at is None or now - solved_at > reopen_window):
        raise Conflict("status", f"the reopen window ({reopen_window}) after solving has passed")


def path_to_closed(current: S) -> list[S]:
    """The statuses a ticket passes through when it is closed from ``current``."""
    ensure_not_closed(current)
    return [S.CLOSED] if current is S.SOLVED else [S.SOLVED, S.CLOSED]
