"""The reducers of the ticket state: what parallel research branches and re-run nodes leave."""

import itertools
from functools import reduce

from orchestrator.state import (
    Decision,
    Evidence,
    Metrics,
    merge_decisions,
    merge_evidence,
    merge_metrics,
)


def d(id: str, step: int, detail: str = "") -> Decision:
    return Decision(id=id, step=step, node="n", what="w", detail=detail)


def ev(source: str, fact: str) -> dict[str, Evidence]:
    return {source: Evidence(source=source, facts=[fact], passages=[], orders=[])}


def test_decisions_are_deduplicated_by_id_and_ordered_by_step_then_id() -> None:
    merged = merge_decisions([d("b", 1), d("c", 2)], [d("a", 1), d("b", 1, "again")])
    assert [(x["id"], x["step"]) for x in merged] == [("a", 1), ("b", 1), ("c", 2)]
    assert merged[1]["detail"] == "again"  # a re-run's decision replaces the first


def test_evidence_from_a_re_run_replaces_rather_than_appends() -> None:
    merged = merge_evidence(ev("crm", "old") | ev("knowledge", "k"), ev("crm", "new"))
    assert merged["crm"]["facts"] == ["new"]
    assert merged["knowledge"]["facts"] == ["k"]


def test_metrics_counts_add_and_maxima_keep_the_larger() -> None:
    merged = merge_metrics(
        Metrics(counts={"tool_calls": 2}, maxima={"slowest_ms": 5.0}),
        Metrics(counts={"tool_calls": 3, "tool_errors": 1}, maxima={"slowest_ms": 4.0}),
    )
    assert merged == Metrics(counts={"tool_calls": 5, "tool_errors": 1}, maxima={"slowest_ms": 5.0})


def test_parallel_branches_merge_the_same_whatever_order_they_finish_in() -> None:
    start = (
        [d("0:triage", 0)],
        ev("memory", "stale"),
        Metrics(counts={"tool_calls": 1}, maxima={}),
    )
    branches = [
        (
            [d("1:knowledge", 1)],
            ev("knowledge", "passage"),
            Metrics(counts={"tool_calls": 1}, maxima={"ms": 3.0}),
        ),
        (
            [d("1:crm", 1)],
            ev("crm", "order"),
            Metrics(counts={"tool_calls": 4}, maxima={"ms": 9.0}),
        ),
        (
            [d("1:memory", 1)],
            ev("memory", "fresh"),
            Metrics(counts={"tool_errors": 1}, maxima={"ms": 1.0}),
        ),
    ]
    merged = []
    for order in itertools.permutations(branches):
        merged.append(
            (
                reduce(merge_decisions, (b[0] for b in order), start[0]),
                reduce(merge_evidence, (b[1] for b in order), start[1]),
                reduce(merge_metrics, (b[2] for b in order), start[2]),
            )
        )
    assert all(m == merged[0] for m in merged)
    decisions, evidence, metrics = merged[0]
    assert [x["id"] for x in decisions] == ["0:triage", "1:crm", "1:knowledge", "1:memory"]
    assert list(evidence) == ["crm", "knowledge", "memory"]
    assert evidence["memory"]["facts"] == ["fresh"]
    assert metrics == {"counts": {"tool_calls": 6, "tool_errors": 1}, "maxima": {"ms": 9.0}}
