"""Which Kafka events start or wake a run: a number no ticket can have is ignored, not stored
(storing it would fail and stop the consumer)."""

from orchestrator.consumer import ticket_of
from schemas.events import Event


def created(ticket_id: object) -> Event:
    return Event(
        type="ticket.created", source="t", subject="ticket/1", data={"ticket_id": ticket_id}
    )


def decided(subject: str) -> Event:
    return Event(
        type="approval.decided", source="a", subject="approval/x", data={"subject": subject}
    )


def test_a_new_ticket_and_a_decision_name_their_ticket() -> None:
    assert ticket_of(created(42)) == 42
    assert ticket_of(decided("ticket:42")) == 42


def test_numbers_no_ticket_can_have_are_ignored() -> None:
    for bad in (2**63, 2**70, 0, -1, True, "42", 4.0, None):
        assert ticket_of(created(bad)) is None, bad
    assert ticket_of(decided("ticket:" + "9" * 30)) is None
    assert ticket_of(decided("order:42")) is None
