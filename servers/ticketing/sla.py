"""SLA clocks, computed when a ticket is read (never stored, so a policy change applies at once).

Both clocks run in calendar time from the ticket's creation, with the targets of its current
priority. First response is met by the first public reply; resolution by solving the ticket
(reopening restarts it: a reopened ticket is not resolved).
"""

from datetime import datetime, timedelta

from schemas.ticketing import Priority, Sla, SlaClock, SlaClockState, SlaPolicy


def clock(due_at: datetime, met_at: datetime | None, now: datetime) -> SlaClock:
    if (met_at or now) > due_at:
        state = SlaClockState.BREACHED
    elif met_at is not None:
        state = SlaClockState.MET
    else:
        state = SlaClockState.RUNNING
    return SlaClock(due_at=due_at, met_at=met_at, state=state)


def compute_sla(
    policy: SlaPolicy,
    priority: Priority,
    created_at: datetime,
    first_responded_at: datetime | None,
    solved_at: datetime | None,
    now: datetime,
) -> Sla:
    target = policy.targets[priority]
    return Sla(
        first_response=clock(
            created_at + timedelta(minutes=target.first_response_minutes), first_responded_at, now
        ),
        resolution=clock(created_at + timedelta(minutes=target.resolution_minutes), solved_at, now),
    )
