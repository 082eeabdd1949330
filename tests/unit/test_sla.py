"""SLA due times per priority, and the running / met / breached states."""

from datetime import UTC, datetime, timedelta

import pytest

from schemas.ticketing import Priority, SlaClockState, SlaPolicy, SlaTarget
from servers.ticketing.sla import compute_sla

CREATED = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
POLICY = SlaPolicy()


@pytest.mark.parametrize(
    ("priority", "first_response", "resolution"),
    [
        (Priority.URGENT, 1, 4),
        (Priority.HIGH, 4, 24),
        (Priority.NORMAL, 8, 48),
        (Priority.LOW, 24, 96),
    ],
)
def test_due_times_follow_priority(
    priority: Priority, first_response: int, resolution: int
) -> None:
    sla = compute_sla(POLICY, priority, CREATED, None, None, CREATED)
    assert sla.first_response.due_at == CREATED + timedelta(hours=first_response)
    assert sla.resolution.due_at == CREATED + timedelta(hours=resolution)


def test_clocks_run_until_due() -> None:
    sla = compute_sla(POLICY, Priority.URGENT, CREATED, None, None, CREATED + timedelta(minutes=59))
    assert sla.first_response.state is SlaClockState.RUNNING
    assert sla.resolution.state is SlaClockState.RUNNING


def test_unanswered_past_due_is_breached() -> None:
    sla = compute_sla(POLICY, Priority.URGENT, CREATED, None, None, CREATED + timedelta(minutes=61))
    assert sla.first_response.state is SlaClockState.BREACHED
    assert sla.resolution.state is SlaClockState.RUNNING


def test_answered_in_time_stays_met_forever() -> None:
    replied = CREATED + timedelta(minutes=30)
    sla = compute_sla(POLICY, Priority.URGENT, CREATED, replied, None, CREATED + timedelta(days=9))
    assert sla.first_response.state is SlaClockState.MET
    assert sla.first_response.met_at == replied


def test_answered_late_is_breached() -> None:
    late = CREATED + timedelta(hours=2)
    sla = compute_sla(POLICY, Priority.URGENT, CREATED, late, None, late)
    assert sla.first_response.state is SlaClockState.BREACHED


def test_solved_in_time_meets_resolution() -> None:
    solved = CREATED + timedelta(hours=3)
    sla = compute_sla(POLICY, Priority.URGENT, CREATED, solved, solved, CREATED + timedelta(days=1))
    assert sla.resolution.state is SlaClockState.MET


def test_policy_is_configurable() -> None:
    policy = SlaPolicy(
        targets={p: SlaTarget(first_response_minutes=5, resolution_minutes=10) for p in Priority}
    )
    sla = compute_sla(policy, Priority.LOW, CREATED, None, None, CREATED + timedelta(minutes=6))
    assert sla.first_response.state is SlaClockState.BREACHED


def test_policy_must_cover_every_priority() -> None:
    with pytest.raises(ValueError, match="no targets for"):
        SlaPolicy(targets={Priority.LOW: SlaTarget(first_response_minutes=1, resolution_minutes=2)})
