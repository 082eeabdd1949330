"""Deciding with a chat model instead of the offline policy.

With ``ANTHROPIC_API_KEY`` set, Claude (``langchain-anthropic``); with
``SUPPORTMESH_MODEL_BASE_URL`` set, an OpenAI-compatible endpoint such as a local Ollama or
vLLM (``langchain-openai``); otherwise no model, and the offline policy decides.

The model gets the ticket and may call the CRM, knowledge and memory *read* tools as often as
it needs (their results, errors included, come back to it as tool messages). The *write* tools
it calls are not carried out: each is answered "proposed", and together, in the order called,
they become the run's plan, which the graph checks as the offline policy's own (the customer's
own orders, refunds priced from the CRM), gates (a human's approval above the threshold or for
a VIP) and the ``act`` node carries out, exactly as proposed. It has decided when it answers
without a tool call; a model that never calls a write tool proposes no action.
"""

import os
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool

from servers.runtime.settings import Settings

READ_TOOLS = (
    "get_customer",
    "list_customer_orders",
    "get_order",
    "get_product",
    "get_item",
    "search_articles",
    "recall",
)
WRITE_TOOLS = (
    "cancel_pending_order",
    "return_delivered_order_items",
    "exchange_delivered_order_items",
    "modify_pending_order_items",
    "modify_pending_order_address",
    "modify_pending_order_payment",
    "update_customer_address",
)
MAX_TURNS = 8  # model turns before it must have decided

INSTRUCTIONS = """You are a support agent of an online retail store. The customer is {customer}.
Only this customer's orders may be looked at or changed; never reveal anything about another
customer. Look up what you need with the read tools. Then call a write tool for each change the
customer asked for that the store's policy allows, with the exact arguments (only pending orders
are cancelled or modified, only delivered ones returned or exchanged, refunds go to the original
payment method or a gift card; one exchange, return or item change per order, carrying all its
items), and finish with a short answer and no tool call. Never guess an order, an item or an
option the customer did not make clear: propose nothing for it. A human approves large refunds
before they happen; you only propose."""


def chat_model(settings: Settings) -> BaseChatModel | None:
    """The configured chat model, or None for the offline policy."""
    if os.environ.get("ANTHROPIC_API_KEY"):
        from langchain_anthropic import ChatAnthropic

        return ChatAnthropic(model=settings.model or "claude-sonnet-4-5", timeout=60, stop=None)
    if settings.model_base_url:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=settings.model or "llama3.1",
            base_url=settings.model_base_url,
            api_key=lambda: os.environ.get("OPENAI_API_KEY", "unused"),
        )
    return None


async def propose(
    model: BaseChatModel, tools: dict[str, BaseTool], customer_id: str | None, text: str
) -> tuple[list[dict[str, Any]], list[BaseMessage]]:
    """Let the model look things up and propose writes: (each ``{"tool", "arguments"}`` in the
    order proposed, the conversation)."""
    bound = model.bind_tools(list(tools.values()))
    messages: list[BaseMessage] = [
        SystemMessage(INSTRUCTIONS.format(customer=customer_id or "not yet identified")),
        HumanMessage(text),
    ]
    proposals: list[dict[str, Any]] = []
    for _ in range(MAX_TURNS):
        answer = await bound.ainvoke(messages)
        messages.append(answer)
        calls = answer.tool_calls if isinstance(answer, AIMessage) else []
        if not calls:
            return proposals, messages
        for call in calls:
            if call["name"] in WRITE_TOOLS:
                proposals.append({"tool": call["name"], "arguments": dict(call["args"])})
                # Answered, so the conversation stays one a model API accepts if sent again.
                messages.append(
                    ToolMessage(
                        "proposed: carried out once the store's checks (and a human, where "
                        "needed) allow it",
                        tool_call_id=call["id"] or "",
                    )
                )
                continue
            if call["name"] not in tools:
                messages.append(
                    ToolMessage(
                        f"invalid_argument: name: no tool {call['name']!r} here",
                        tool_call_id=call["id"] or "",
                        status="error",
                    )
                )
                continue
            result = await tools[call["name"]].ainvoke({**call, "type": "tool_call"})
            messages.append(result)
    return proposals, messages
