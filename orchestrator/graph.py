"""The ticket workflow as a LangGraph graph (DESIGN §6).

    intake -> triage -> research (knowledge | crm | memory, in parallel) -> solution
      solution -> request_approval -> await_decision -> solution   (a refund a human must approve)
      solution -> act -> quality                                    (an action the policy allows)
      solution -> quality                                           (nothing to do, or done)
      quality -> solution (at most MAX_DRAFTS times) | resolve

Every capability is reached over MCP through the run's ``Mesh``. Writes sit in nodes of their
own (``request_approval``, ``act``, ``resolve``), never in a node that interrupts, and each
write's idempotency key comes from (thread, node, tool, attempt), so a node that runs again
after a resume or a crash repeats nothing. ``await_decision`` pauses the run with
``interrupt()`` and, once resumed, reads the decision back from the approvals server: the resume
value only says which approval to look at.
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command, RetryPolicy, Send, interrupt

from orchestrator import policy, replies
from orchestrator.finding import Lookup, identity_lookups
from orchestrator.mesh import Calls, Mesh, ToolFailed, Unavailable
from orchestrator.model import READ_TOOLS, WRITE_TOOLS, propose
from orchestrator.state import (
    Decision,
    Evidence,
    Passage,
    ResearchInput,
    ResearchOutput,
    ResearchState,
    TicketState,
)
from orchestrator.tracing import traced
from orchestrator.triage import Triage, classify
from servers.runtime.keys import joined_key

MAX_DRAFTS = 2  # replies quality may send back to solution before a human takes the ticket
RETRY = RetryPolicy(retry_on=Unavailable, max_attempts=6, initial_interval=0.5, max_interval=8)


@dataclass
class RunContext:
    """What every node of a run is given besides the state: the mesh, the store's limits, and
    the chat model that decides (None: the offline policy decides)."""

    mesh: Mesh
    limits: policy.Limits
    model: BaseChatModel | None = None


def decision(state: TicketState, node: str, what: str, detail: str) -> Decision:
    """A decision whose id is stable when ``node`` runs again for the same ticket and draft."""
    attempt = state.get("quality", {}).get("drafts", 0)
    return Decision(
        id=f"{attempt:02d}:{node}:{what}",
        step=attempt,
        node=node,
        what=what,
        detail=detail,
    )


def write_key(state: TicketState, node: str, tool: str, attempt: int = 0) -> str:
    """The idempotency key of a write: (thread, node, tool, attempt of that decision)."""
    return joined_key("orchestrator", state["ticket_id"], node, tool, attempt)


async def intake(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Read the ticket; its customer, when the ticket names one."""
    calls = runtime.context.mesh.calls("get_ticket")
    ticket = await calls.call("get_ticket", ticket_id=state["ticket_id"])
    text = f"{ticket['subject']}\n\n{ticket['description']}"
    return {
        "subject": ticket["subject"],
        "text": text,
        "customer_id": ticket.get("customer_id"),
        "messages": [HumanMessage(text, id=f"ticket-{state['ticket_id']}")],
        "quality": {"drafts": 0, "problems": []},
        "metrics": calls.metrics(),
    }


async def triage(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Intent, priority and sentiment; who the customer is when the ticket does not say."""
    calls = runtime.context.mesh.calls("find_customer")
    found = classify(state["text"])
    customer_id = state.get("customer_id")
    how = "the ticket"
    if customer_id is None:
        customer_id, how = await identify(calls, identity_lookups(state["text"]))
    decisions = [
        decision(
            state, "triage", "intent", f"{found.intent} (all: {', '.join(found.intents) or '-'})"
        ),
        decision(state, "triage", "customer", f"{customer_id or 'unknown'} ({how})"),
    ]
    if found.handover:
        decisions.append(decision(state, "triage", "handover", found.handover))
    return {
        "triage": found.as_state(),
        "customer_id": customer_id,
        "decisions": decisions,
        "metrics": calls.metrics(),
    }


async def identify(calls: Calls, lookups: list[Lookup]) -> tuple[str | None, str]:
    """The customer every candidate of the message that the CRM knows names: each email, each
    name with each zip code, asked at once. Exactly one customer, or none (several, or none,
    mean the agent asks)."""

    async def ask(lookup: Lookup) -> str | None:
        try:
            return str((await calls.call("find_customer", **lookup.arguments()))["customer_id"])
        except Unavailable:
            raise
        except ToolFailed:
            return None

    matches = await asyncio.gather(*(ask(lookup) for lookup in lookups))
    customer_id, why = policy.identified(matches)
    found = [lookups[i] for i, m in enumerate(matches) if m]
    how = (
        f"from {'the email' if found[0].email else 'name and zip'}"
        if customer_id
        else f"{why} of {len(lookups)} candidates in the message matched"
    )
    return customer_id, how


def fan_out(state: ResearchInput) -> list[Send]:
    return [Send(source, state) for source in ("knowledge", "crm", "memory")]


def evidence(
    source: str,
    *,
    facts: list[str] | None = None,
    passages: list[Passage] | None = None,
    orders: list[dict[str, Any]] | None = None,
    products: dict[str, dict[str, Any]] | None = None,
    error: str | None = None,
) -> dict[str, Evidence]:
    found = Evidence(
        source=source,
        facts=facts or [],
        passages=passages or [],
        orders=orders or [],
        products=products or {},
    )
    if error is not None:
        found["error"] = error
    return {source: found}


def orders_found(state: TicketState) -> list[dict[str, Any]]:
    crm = state.get("evidence", {}).get("crm")
    return crm["orders"] if crm else []


def products_found(state: TicketState) -> dict[str, dict[str, Any]]:
    crm = state.get("evidence", {}).get("crm")
    return dict(crm.get("products", {})) if crm else {}


def passages_found(state: TicketState) -> list[Passage]:
    knowledge = state.get("evidence", {}).get("knowledge")
    return knowledge["passages"] if knowledge else []


async def knowledge(state: ResearchInput, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The knowledge base's best passages for what the customer wrote (their whole message)."""
    calls = runtime.context.mesh.calls("search_articles")
    try:
        found = await calls.call("search_articles", query=state["text"][:20_000], k=5)
    except Unavailable:
        raise
    except ToolFailed as exc:
        return {"evidence": evidence("knowledge", error=exc.text), "metrics": calls.metrics()}
    passages = [
        Passage(article_id=h["article_id"], title=h["title"], text=h["text"], score=h["score"])
        for h in found["hits"]
        if not h["article_id"].startswith("internal-")
    ]
    return {"evidence": evidence("knowledge", passages=passages), "metrics": calls.metrics()}


async def crm(state: ResearchInput, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The customer's orders, and the products the policy must see: those of their items and
    those the message names (their variants and options)."""
    calls = runtime.context.mesh.calls(
        "list_customer_orders", "get_order", "list_product_types", "get_product"
    )
    customer_id = state.get("customer_id")
    if customer_id is None:
        return {
            "evidence": evidence("crm", error="customer not identified"),
            "metrics": calls.metrics(),
        }
    try:
        summaries = (await calls.call("list_customer_orders", customer_id=customer_id))["orders"]
        details, types = await asyncio.gather(
            asyncio.gather(*(calls.call("get_order", order_id=s["order_id"]) for s in summaries)),
            calls.call("list_product_types"),
        )
        orders = [
            {
                "order_id": order["order_id"],
                "status": order["status"],
                "total": summary["total"],
                "items": order["items"],
                "address": order["address"],
                "payment_history": order["payment_history"],
                "fulfillments": order.get("fulfillments", []),
            }
            for summary, order in zip(summaries, details, strict=True)
        ]
        wanted = policy.products_wanted(state["text"], orders, types["products"])
        fetched = await asyncio.gather(*(calls.call("get_product", product_id=p) for p in wanted))
    except Unavailable:
        raise
    except ToolFailed as exc:
        return {"evidence": evidence("crm", error=exc.text), "metrics": calls.metrics()}
    products = {str(p["product_id"]): p for p in fetched}
    return {
        "evidence": evidence("crm", orders=orders, products=products),
        "metrics": calls.metrics(),
    }


async def memory(state: ResearchInput, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """What we remember of the customer that bears on this message."""
    calls = runtime.context.mesh.calls("recall")
    customer_id = state.get("customer_id")
    if customer_id is None:
        return {"evidence": evidence("memory"), "metrics": calls.metrics()}
    try:
        found = await calls.call("recall", customer_id=customer_id, query=state["text"][:4000], k=3)
    except Unavailable:
        raise
    except ToolFailed as exc:
        return {"evidence": evidence("memory", error=exc.text), "metrics": calls.metrics()}
    facts = [hit["memory"]["text"] for hit in found["hits"]]
    return {"evidence": evidence("memory", facts=facts), "metrics": calls.metrics()}


def research_graph() -> CompiledStateGraph[
    ResearchState, RunContext, ResearchInput, ResearchOutput
]:
    """Knowledge search, CRM lookup and memory recall at once, merged by the state's reducers.
    It takes only what the branches read and gives back only evidence and metrics, so the
    parent's counts are not added in twice."""
    builder = StateGraph(
        ResearchState,
        context_schema=RunContext,
        input_schema=ResearchInput,
        output_schema=ResearchOutput,
    )
    for name, node in (("knowledge", knowledge), ("crm", crm), ("memory", memory)):
        builder.add_node(name, traced(name, node), retry_policy=RETRY)
        builder.add_edge(name, END)
    builder.add_conditional_edges(START, fan_out, ["knowledge", "crm", "memory"])
    return builder.compile()


async def solution(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The writes the policy calls for (decided once per ticket) and the reply, drafted from
    the evidence and from what has happened so far (approval, writes)."""
    calls = runtime.context.mesh.calls("get_customer")
    found = Triage.from_state(state["triage"])
    orders = orders_found(state)
    planned = state.get("plan")
    customer: dict[str, Any] | None = None
    if state.get("customer_id"):
        try:
            customer = await calls.call("get_customer", customer_id=state["customer_id"])
        except Unavailable:
            raise
        except ToolFailed:
            customer = None  # a ticket naming a customer id the CRM does not know: ask who
    update: dict[str, Any] = {}
    if planned is None:
        model = runtime.context.model
        if model is not None:
            # The model may read (CRM, knowledge, memory) and propose writes; no other tool.
            mesh = runtime.context.mesh
            allowed = [n for n in (*READ_TOOLS, *WRITE_TOOLS) if n in mesh.tools_by_name]
            tools = {t.name: t for t in mesh.tools(allowed)}
            proposals, conversation = await propose(
                model, tools, state.get("customer_id"), state["text"]
            )
            update["messages"] = conversation[2:]  # its turns and the tools' answers
            chosen = policy.proposed_plan(
                proposals, found, customer, orders, runtime.context.limits
            )
        else:
            chosen = policy.plan(
                found,
                state["text"],
                customer,
                orders,
                products_found(state),
                runtime.context.limits,
            )
        planned = chosen.as_state()
        update["plan"] = planned
        described = "; ".join(f"{a.tool}({a.arguments})" for a in chosen.actions)
        declined = ", ".join(f"{d.intent}: {d.why}" for d in chosen.declined)
        update["decisions"] = [
            decision(
                state,
                "solution",
                "action" if model is None else "action (model)",
                (described or f"none: {chosen.blocked or 'nothing that can be done'}")
                + (f" (not done: {declined})" if declined else ""),
            )
        ]
        if chosen.needs_approval:
            update["decisions"].append(
                decision(state, "solution", "escalate", chosen.needs_approval)
            )
    approval = state.get("approval")
    outcome = state.get("outcome")
    will_act = bool(
        planned["actions"]
        and outcome is None
        and (not planned["needs_approval"] or (approval or {}).get("status") == "approved")
    )
    reply = replies.compose_reply(
        customer["name"]["first_name"] if customer else None,
        planned,
        {"done": list(range(len(planned["actions"])))} if will_act else outcome,
        approval,
        passages_found(state),
        planned["facts"],
        answers_question="kb_question" in found.intents,
    )
    update["reply"] = reply
    update["metrics"] = calls.metrics()
    return update


def gate(state: TicketState) -> Literal["request_approval", "act", "quality"]:
    """Straight to acting, to a human's approval first, or on to the quality check."""
    planned = state.get("plan") or {}
    approval = state.get("approval")
    if not planned.get("actions") or state.get("outcome") is not None:
        return "quality"
    if planned.get("needs_approval"):
        if approval is None:
            return "request_approval"
        return "act" if approval.get("status") == "approved" else "quality"
    return "act"


async def request_approval(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Ask the approvals server for a human's decision on exactly the planned action; tell the
    customer it is waiting; mark the ticket pending."""
    calls = runtime.context.mesh.calls("request_approval", "update_ticket", "add_comment")
    planned = state["plan"]
    assert planned is not None
    tool, arguments = policy.approval_request(planned)
    approval = await calls.call(
        "request_approval",
        subject=f"ticket:{state['ticket_id']}",
        action_tool=tool,
        action_arguments=arguments,
        amount=planned["amount"],
        currency="USD",
        reason="; ".join(a["summary"] for a in planned["actions"])[:1500]
        + f": {planned['needs_approval']}",
        expires_in_seconds=runtime.context.limits.approval_expires_seconds,
        idempotency_key=write_key(state, "request_approval", "request_approval"),
    )
    await calls.call(
        "update_ticket",
        ticket_id=state["ticket_id"],
        status="pending",
        add_tags=["awaiting-approval"],
        idempotency_key=write_key(state, "request_approval", "update_ticket"),
    )
    waiting = replies.compose_reply(None, planned, None, {"status": "pending"}, [], [])
    await calls.call(
        "add_comment",
        ticket_id=state["ticket_id"],
        body=waiting["text"],
        public=True,
        idempotency_key=write_key(state, "request_approval", "add_comment"),
    )
    return {
        "approval": {"id": approval["id"], "status": approval["status"]},
        "decisions": [decision(state, "request_approval", "approval", f"asked: {approval['id']}")],
        "metrics": calls.metrics(),
    }


async def await_decision(state: TicketState, runtime: Runtime[RunContext]) -> Command[Any]:
    """Pause until a human decides; then read the decision from the approvals server."""
    approval = state["approval"]
    planned = state["plan"]
    assert approval is not None and planned is not None
    interrupt(
        {
            "action_requests": [
                {
                    "name": action["tool"],
                    "args": action["arguments"],
                    "description": f"{action['summary']} ({planned['needs_approval']}); "
                    f"approval {approval['id']}",
                }
                for action in planned["actions"]
            ],
            "review_configs": [
                {"action_name": tool, "allowed_decisions": ["approve", "reject"]}
                for tool in dict.fromkeys(a["tool"] for a in planned["actions"])
            ],
            "approval_id": approval["id"],
        }
    )
    calls = runtime.context.mesh.calls("get_approval")
    record = await calls.call("get_approval", approval_id=approval["id"])
    status = record["status"]
    read = {"id": record["id"], "status": status, "decided_by": record.get("decided_by")}
    if status == "pending":
        # Resumed before anyone decided: wait again.
        return Command(goto="await_decision", update={"metrics": calls.metrics()})
    tool, arguments = policy.approval_request(planned)
    if status == "approved" and (
        record["action_tool"] != tool or record["action_arguments"] != arguments
    ):
        read["status"] = "rejected"  # approved something else: fail closed
    return Command(
        goto="solution",
        update={
            "approval": read,
            "decisions": [
                decision(
                    state, "await_decision", "approval", f"{read['status']} by {read['decided_by']}"
                )
            ],
            "metrics": calls.metrics(),
        },
    )


async def act(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The planned CRM writes, in order, with exactly the arguments planned (and approved, when
    asked), each under a key of its own; one refused stops the rest."""
    planned = state["plan"]
    assert planned is not None and planned["actions"]
    tools = [a["tool"] for a in planned["actions"]]
    calls = runtime.context.mesh.calls(*tools)  # the writes decided, no other
    outcome: dict[str, Any] = {"done": [], "failed": None}
    for index, action in enumerate(planned["actions"]):
        try:
            await calls.call(
                action["tool"],
                **action["arguments"],
                idempotency_key=write_key(state, "act", f"{index}-{action['tool']}"),
            )
        except Unavailable:
            raise
        except ToolFailed as exc:
            outcome.update(failed=index, error=exc.text)
            break
        outcome["done"].append(index)
    outcome["status"] = (
        "done" if outcome["failed"] is None else "partial" if outcome["done"] else "failed"
    )
    made = ", ".join(tools[i] for i in outcome["done"]) or "nothing"
    refused = f"; refused: {tools[outcome['failed']]}" if outcome["failed"] is not None else ""
    return {
        "outcome": outcome,
        "decisions": [decision(state, "act", "outcome", f"{outcome['status']}: {made}{refused}")],
        "metrics": calls.metrics(),
    }


def quality(state: TicketState) -> Command[Literal["solution", "resolve"]]:
    """Check the reply: grounded in what was found, no other customer's data, and claiming
    exactly the action taken. A bad draft goes back to solution, at most MAX_DRAFTS times."""
    planned = state.get("plan") or {}
    reply = state["reply"]
    assert reply is not None
    orders = orders_found(state)
    passages = passages_found(state)
    problems = replies.check_reply(
        reply,
        state.get("outcome"),
        planned,
        [o["order_id"] for o in orders],
        [p["article_id"] for p in passages],
        planned.get("facts", []),
    )
    drafts = state.get("quality", {}).get("drafts", 0) + 1
    checked = {"drafts": drafts, "problems": problems}
    note = decision(state, "quality", "check", "; ".join(problems) or "ok")
    if problems and drafts < MAX_DRAFTS:
        return Command(goto="solution", update={"quality": checked, "decisions": [note]})
    return Command(goto="resolve", update={"quality": checked, "decisions": [note]})


async def resolve(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Post the reply on the ticket and set its status; remember the conversation."""
    calls = runtime.context.mesh.calls("add_comment", "update_ticket", "append_session", "remember")
    planned = state.get("plan") or {}
    reply = state["reply"]
    assert reply is not None
    handover = bool(state.get("quality", {}).get("problems")) or str(
        planned.get("blocked", "")
    ).startswith("handover")
    outcome = state.get("outcome") or {}
    failed = outcome.get("status") in ("failed", "partial") or (state.get("approval") or {}).get(
        "status"
    ) in ("rejected", "expired")
    ticket_id = state["ticket_id"]
    await calls.call(
        "add_comment",
        ticket_id=ticket_id,
        body=reply["text"],
        public=True,
        idempotency_key=write_key(state, "resolve", "add_comment"),
    )
    with_human = handover or failed
    if with_human:
        # The human taking over reads exactly what was written before them, and why it is theirs.
        actions = planned.get("actions", [])
        done = [actions[i]["summary"] for i in outcome.get("done", [])]
        problems = state.get("quality", {}).get("problems") or []
        note = "Handed to a human: " + (
            "; ".join(problems)
            or str(planned.get("blocked") or outcome.get("error") or "")
            or str((state.get("approval") or {}).get("status"))
        )
        note += "\nDone: " + ("; ".join(done) or "nothing")
        if outcome.get("failed") is not None:
            note += f"\nRefused: {actions[outcome['failed']]['summary']} ({outcome.get('error')})"
        await calls.call(
            "add_comment",
            ticket_id=ticket_id,
            body=note,
            public=False,
            idempotency_key=write_key(state, "resolve", "add_comment-note"),
        )
    await calls.call(
        "update_ticket",
        ticket_id=ticket_id,
        status="open" if with_human else "solved",
        priority=state["triage"]["priority"],
        add_tags=[
            f"intent:{state['triage']['intent']}",
            f"category:{state['triage']['category']}",
            *(["needs-human"] if with_human else []),
        ],
        remove_tags=["awaiting-approval"],
        idempotency_key=write_key(state, "resolve", "update_ticket"),
    )
    customer_id = state.get("customer_id")
    if customer_id:
        for speaker, text, part in (
            ("customer", state["text"], "customer"),
            ("agent", reply["text"], "agent"),
        ):
            await calls.call(
                "append_session",
                customer_id=customer_id,
                session_id=f"ticket-{ticket_id}",
                speaker=speaker,
                text=text[:8000],
                idempotency_key=write_key(state, "resolve", f"append_session-{part}"),
            )
        summary = (
            f"Ticket {ticket_id} ({state['triage']['intent']}): "
            + (
                "; ".join(a["summary"] for a in planned.get("actions", []))
                or str(planned.get("blocked") or "no write")
            )
            + (f", {outcome['status']}" if outcome else "")
        )
        await calls.call(
            "remember",
            customer_id=customer_id,
            text=summary,
            kind="interaction_summary",
            source=f"ticket:{ticket_id}",
            idempotency_key=write_key(state, "resolve", "remember"),
        )
    return {
        "messages": [AIMessage(reply["text"], id=f"reply-{ticket_id}")],
        "decisions": [
            decision(state, "resolve", "status", "open, with a human" if with_human else "solved")
        ],
        "metrics": calls.metrics(),
    }


def build_graph(
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[TicketState, RunContext, TicketState, TicketState]:
    builder = StateGraph(TicketState, context_schema=RunContext)
    # Each node runs in a span of its own (orchestrator.tracing).
    for name, node in (
        ("intake", intake),
        ("triage", triage),
        ("solution", solution),
        ("request_approval", request_approval),
        ("await_decision", await_decision),
        ("act", act),
        ("resolve", resolve),
    ):
        builder.add_node(name, traced(name, node), retry_policy=RETRY)
    builder.add_node("research", research_graph())
    builder.add_node("quality", quality)  # decides from the state alone: nothing to trace
    builder.add_edge(START, "intake")
    builder.add_edge("intake", "triage")
    builder.add_edge("triage", "research")
    builder.add_edge("research", "solution")
    builder.add_conditional_edges("solution", gate)
    builder.add_edge("request_approval", "await_decision")
    builder.add_edge("act", "quality")
    builder.add_edge("resolve", END)
    return builder.compile(checkpointer=checkpointer)
