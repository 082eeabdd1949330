"""Session summaries are extractive and deterministic: the same conversation, the same summary."""

from datetime import UTC, datetime, timedelta

from schemas.memory import Speaker, Turn
from servers.memory.tasks import summarize

START = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def conversation(*turns: tuple[Speaker, str]) -> list[Turn]:
    return [
        Turn(speaker=s, text=t, at=START + timedelta(minutes=i)) for i, (s, t) in enumerate(turns)
    ]


def test_summary_keeps_what_the_customer_stressed_and_the_agents_last_word() -> None:
    turns = conversation(
        (Speaker.CUSTOMER, "Hello. My order of running shoes never arrived."),
        (Speaker.AGENT, "Let me check the tracking."),
        (Speaker.CUSTOMER, "The tracking says the shoes were delivered. They were not."),
        (Speaker.CUSTOMER, "Thanks."),
        (Speaker.AGENT, "I have sent new shoes by express. You will have them Friday."),
    )
    summary = summarize("chat-7", turns)
    assert summary.startswith("Conversation chat-7 on 2026-11-02 (5 turns).")
    assert "running shoes never arrived" in summary and "shoes were delivered" in summary
    assert "Thanks." not in summary
    assert summary.endswith("Agent (last reply): I have sent new shoes by express.")
    assert summarize("chat-7", turns) == summary


def test_summary_is_bounded() -> None:
    turns = conversation(*[(Speaker.CUSTOMER, "word " * 400 + ".")] * 3)
    assert len(summarize("s", turns)) <= 1200
