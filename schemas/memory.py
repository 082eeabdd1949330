"""The memory server's contract: conversation turns (session memory) and what the mesh keeps
about a customer across conversations (long-term memory)."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints


class Speaker(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"
    SYSTEM = "system"


class MemoryKind(StrEnum):
    PREFERENCE = "preference"
    FACT = "fact"
    INTERACTION_SUMMARY = "interaction_summary"


SessionId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$"),
    Field(description="The conversation, e.g. a chat id or 'ticket-42' (letters, digits, _.:-)."),
]
TurnText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=8000),
    Field(description="What was said."),
]
MemoryText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=8000),
    Field(description="The memory, as one self-contained statement about the customer."),
]
RecallQuery = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1000),
    Field(description="What you want to know about the customer, in plain words."),
]


class Turn(BaseModel):
    speaker: Speaker
    text: str
    at: datetime


class Session(BaseModel):
    customer_id: str
    session_id: str
    turns: list[Turn] = Field(description="The last turns asked for, oldest first.")
    total_turns: int = Field(description="Turns kept for this session (bounded).")
    expires_in_seconds: int | None = Field(
        None, description="Until the session is dropped; None if it has no turns."
    )


class SessionAppended(BaseModel):
    customer_id: str
    session_id: str
    total_turns: int
    expires_in_seconds: int


class Memory(BaseModel):
    id: str
    customer_id: str
    kind: MemoryKind
    text: str
    source: str
    created_at: datetime


class Remembered(BaseModel):
    """What remember returns (not the text: results are kept for retries and audit)."""

    id: str
    customer_id: str
    kind: MemoryKind
    created_at: datetime


class RecallHit(BaseModel):
    memory: Memory
    score: float


class Recalled(BaseModel):
    customer_id: str
    hits: list[RecallHit]


class MemoryPage(BaseModel):
    memories: list[Memory]
    next_cursor: str | None = None


class ErasureReceipt(BaseModel):
    """What forget_customer removed, store by store."""

    customer_id: str
    sessions_removed: int
    turns_removed: int
    memories_removed: int
    vectors_removed: int
    erased_at: datetime
