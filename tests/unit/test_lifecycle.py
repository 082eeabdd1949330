"""The ticket state machine: every pair of statuses, and the reopen window."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from schemas.ticketing import TicketStatus as S
from servers.runtime.errors import Conflict
from servers.ticketing.lifecycle import check_transition, path_to_closed

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=7)
LEGAL = {
    (S.NEW, S.OPEN),
    (S.NEW, S.PENDING),
    (S.NEW, S.SOLVED),
    (S.OPEN, S.PENDING),
    (S.OPEN, S.SOLVED),
    (S.PENDING, S.OPEN),
    (S.PENDING, S.SOLVED),
    (S.SOLVED, S.OPEN),
    (S.SOLVED, S.CLOSED),
}


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_legal_transition_is_allowed(current: S, target: S) -> None:
    check_transition(
        current, target, solved_at=NOW - timedelta(hours=1), now=NOW, reopen_window=WINDOW
    )


ILLEGAL = sorted(set(itertools.product(S, S)) - LEGAL - {(s, s) for s in S})


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_illegal_transition_is_a_conflict(current: S, target: S) -> None:
    with pytest.raises(Conflict) as refused:
        check_transition(current, target, solved_at=NOW, now=NOW, reopen_window=WINDOW)
    assert str(refused.value).startswith("conflict: ")


def test_nothing_moves_back_to_new() -> None:
    assert all((s, S.NEW) not in LEGAL for s in S)


def test_reopen_within_the_window_is_allowed() -> None:
    check_transition(S.SOLVED, S.OPEN, solved_at=NOW - WINDOW, now=NOW, reopen_window=WINDOW)


def test_reopen_after_the_window_is_refused() -> None:
    with pytest.raises(Conflict, match="reopen window"):
        check_transition(
            S.SOLVED,
            S.OPEN,
            solved_at=NOW - WINDOW - timedelta(seconds=1),
            now=NOW,
            reopen_window=WINDOW,
        )


def test_closed_ticket_cannot_change() -> None:
    for target in S:
        with pytest.raises(Conflict, match="closed"):
            check_transition(S.CLOSED, target, solved_at=NOW, now=NOW, reopen_window=WINDOW)


@pytest.mark.parametrize(
    ("current", "path"),
    [
        (S.NEW, [S.SOLVED, S.CLOSED]),
        (S.OPEN, [S.SOLVED, S.CLOSED]),
        (S.PENDING, [S.SOLVED, S.CLOSED]),
        (S.SOLVED, [S.CLOSED]),
    ],
)
def test_closing_passes_through_solved(current: S, path: list[S]) -> None:
    assert path_to_closed(current) == path


def test_closing_a_closed_ticket_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="closed"):
        path_to_closed(S.CLOSED)
