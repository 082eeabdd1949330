"""Customer isolation, as a property: for any two customer ids the schemas accept, nothing
written as one is ever read, listed, recalled or erased as the other, in any store —
PostgreSQL (memories, tickets), Redis (sessions) and Qdrant (memory vectors).

Ids are drawn from any characters the schemas allow, with a bias for the ones that break
naively joined keys: for customer ``A`` with session ``chat:42`` the other customer is often
``A:chat`` with session ``42``, which a key ``session:{customer}:{session}`` cannot tell apart.
"""

import re
import uuid
from typing import Any

from fastmcp import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as run_with
from hypothesis import strategies as st
from qdrant_client import models

from servers.memory.store import COLLECTION
from servers.runtime.settings import Settings
from servers.runtime.vectors import open_vectors
from tests.integration.test_ticketing_tools import call

SESSION = r"^[A-Za-z0-9_.:-]{1,100}$"  # SessionId's pattern
TRICKY = ":%_-./\\ *?[]{}\"'é\u00a0"
characters = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
ids = st.text(alphabet=st.sampled_from(TRICKY) | characters, min_size=1, max_size=30).map(str.strip)
sessions = st.from_regex(SESSION, fullmatch=True).filter(lambda s: len(s) <= 30)


@st.composite
def customer_pairs(draw: st.DrawFn) -> tuple[str, str, str, str]:
    """(customer A, A's session, customer B, B's session), two different customers."""
    a, session_a = draw(ids.filter(bool)), draw(sessions)
    joined = f"{a}:{session_a}"
    # B and B's session that join to the same text: the collision naive keys would have.
    splits = [
        (joined[:i], joined[i + 1 :])
        for i, char in enumerate(joined)
        if char == ":" and i != len(a) and joined[:i].strip() == joined[:i]
    ]
    splits = [(b, s) for b, s in splits if b and re.fullmatch(SESSION, s)]
    collide: bool = draw(st.booleans())
    if splits and collide:
        b, session_b = draw(st.sampled_from(splits))
    else:
        b = draw(ids.filter(lambda b: bool(b) and b != a))
        session_b = draw(st.sampled_from([session_a, draw(sessions)]))
    return a, session_a, b, session_b


def texts(found: dict[str, Any], key: str) -> list[str]:
    return [item["text"] if "text" in item else item["memory"]["text"] for item in found[key]]


@run_with(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(pair=customer_pairs())
async def test_nothing_crosses_between_two_customers(
    pair: tuple[str, str, str, str],
    memory: Client[Any],
    ticketing: Client[Any],
    memory_settings: Settings,
) -> None:
    a, session_a, b, session_b = pair
    said = f"A said {uuid.uuid4().hex}"
    await call(
        memory, "append_session", customer_id=a, session_id=session_a, speaker="customer", text=said
    )
    await call(memory, "remember", customer_id=a, text=said, kind="fact")
    ticket = await call(
        ticketing, "create_ticket", subject="Isolation", description=said, customer_id=a
    )

    # Read, list, recall and search as B: nothing of A's.
    for session in {session_a, session_b}:
        seen = await call(memory, "get_session", customer_id=b, session_id=session)
        assert said not in texts(seen, "turns")
    assert said not in texts(await call(memory, "list_memories", customer_id=b), "memories")
    assert said not in texts(await call(memory, "recall", customer_id=b, query=said), "hits")
    found = await call(ticketing, "search_tickets", customer_id=b)
    assert ticket["id"] not in [t["id"] for t in found["tickets"]]

    # Write and erase as B: A's session, memories and vectors are untouched.
    await call(
        memory,
        "append_session",
        customer_id=b,
        session_id=session_b,
        speaker="customer",
        text="B was here",
    )
    await call(memory, "forget_customer", customer_id=b)
    kept = await call(memory, "get_session", customer_id=a, session_id=session_a)
    assert texts(kept, "turns") == [said]
    assert said in texts(await call(memory, "list_memories", customer_id=a), "memories")
    assert said in texts(await call(memory, "recall", customer_id=a, query=said), "hits")
    assert _vectors_of(memory_settings, a) >= 1

    await call(memory, "forget_customer", customer_id=a)
    assert _vectors_of(memory_settings, a) == 0


def _vectors_of(settings: Settings, customer_id: str) -> int:
    """Points in Qdrant that carry ``customer_id`` (read straight from the store)."""
    vectors = open_vectors(settings)
    only = models.Filter(
        must=[models.FieldCondition(key="customer_id", match=models.MatchValue(value=customer_id))]
    )
    with vectors.lock:
        return vectors.client.count(COLLECTION, count_filter=only, exact=True).count
