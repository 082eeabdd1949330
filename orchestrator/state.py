"""What a ticket's run keeps between steps: small, serialisable, checkpointed after every step.

The state holds ids, the conversation, the decisions taken, the evidence gathered for the reply,
the pending approval and a few metrics; never a copy of a server's record (the servers are the
system of record, a node reads what it needs again). Channels that parallel nodes write (the
research branches) have reducers that give the same result whatever order the branches finish
in, and that replace rather than append when a node runs again after a resume or a crash.
"""

from typing import Annotated, Any, NotRequired, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


class Decision(TypedDict):
    """One thing the run decided, and why: the audit trail a reviewer reads."""

    id: str  # stable across re-runs of the node that made it: "<step>:<node>:<what>"
    step: int  # the graph step that made it; decisions are ordered by (step, id)
    node: str
    what: str  # e.g. "intent", "action", "escalate", "approval", "quality"
    detail: str


class Passage(TypedDict):
    article_id: str
    title: str
    text: str
    score: float


class Evidence(TypedDict):
    """What one research source found. ``facts`` are short statements a reply may cite (an order
    and its status, a memory); ``passages`` the knowledge base's answers; ``error`` a tool error
    the source met, kept as evidence for the next step rather than raised."""

    source: str  # "knowledge" | "crm" | "memory"
    facts: list[str]
    passages: list[Passage]
    orders: list[dict[str, Any]]  # the customer's orders in brief: id, status, items, payments
    products: NotRequired[dict[str, dict[str, Any]]]  # the products the policy looked at, by id
    error: NotRequired[str]


class Metrics(TypedDict):
    counts: dict[str, int]  # added up across nodes: tool calls, tool errors, …
    maxima: dict[str, float]  # the largest seen: slowest tool call in ms, …


def merge_decisions(left: list[Decision], right: list[Decision]) -> list[Decision]:
    """Union by id (a re-run's decision replaces the first), ordered by (step, id)."""
    by_id = {d["id"]: d for d in left}
    by_id.update({d["id"]: d for d in right})
    return sorted(by_id.values(), key=lambda d: (d["step"], d["id"]))


def merge_evidence(left: dict[str, Evidence], right: dict[str, Evidence]) -> dict[str, Evidence]:
    """Merged by source: a source that reports again replaces what it reported before."""
    merged = dict(left)
    merged.update(right)
    return dict(sorted(merged.items()))


def merge_metrics(left: Metrics, right: Metrics) -> Metrics:
    """Counts add up; maxima keep the larger."""
    counts = dict(left.get("counts", {}))
    for name, count in right.get("counts", {}).items():
        counts[name] = counts.get(name, 0) + count
    maxima = dict(left.get("maxima", {}))
    for name, largest in right.get("maxima", {}).items():
        maxima[name] = max(maxima.get(name, largest), largest)
    return Metrics(counts=dict(sorted(counts.items())), maxima=dict(sorted(maxima.items())))


class TicketState(TypedDict, total=False):
    """One ticket's run. The thread id is the ticket id."""

    ticket_id: int
    customer_id: str | None  # who the customer is, once known
    subject: str
    text: str  # what the customer wrote: the ticket's subject and description
    messages: Annotated[list[AnyMessage], add_messages]
    triage: dict[str, Any]  # the triage decision: intent, priority, sentiment, entities
    evidence: Annotated[dict[str, Evidence], merge_evidence]
    plan: dict[str, Any] | None  # the action to take (tool, arguments, amount) and why
    reply: dict[str, Any] | None  # the drafted reply: text and what it cites
    approval: dict[str, Any] | None  # the approval asked for, and its decision once read back
    outcome: dict[str, Any] | None  # what the action did, or why none was taken
    quality: dict[str, Any]  # attempts so far and the problems found
    decisions: Annotated[list[Decision], merge_decisions]
    metrics: Annotated[Metrics, merge_metrics]


class ResearchInput(TypedDict):
    """What the research branches read."""

    ticket_id: int
    customer_id: str | None
    text: str
    triage: dict[str, Any]


class ResearchOutput(TypedDict, total=False):
    """What research gives back to the ticket's run."""

    evidence: Annotated[dict[str, Evidence], merge_evidence]
    metrics: Annotated[Metrics, merge_metrics]


class ResearchState(ResearchInput, ResearchOutput):
    """The research subgraph's own state."""
