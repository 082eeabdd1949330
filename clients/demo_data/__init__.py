"""The data ``supportmesh up --demo`` loads into an empty mesh and the tickets ``supportmesh
demo`` puts through it, as one of two sets:

- ``demo`` (built in): a store of 60 customers and its policy (``store/``, made by
  ``build_store.py``), a knowledge base of 47 articles (``kb/``) that agree with each other and
  with the rules of the orchestrator's offline policy, and 12 tickets (``tickets.jsonl``).
- ``tau2``: tau2-bench's retail store (500 customers, 1,000 orders) and its policy, our 47
  articles with tau2-bench's 698 banking articles beside them (a knowledge base where most
  articles answer other questions), and 10 tickets written for that store
  (``tau2_tickets.jsonl``). Not part of the repository: ``supportmesh data fetch tau2``.
"""

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

HERE = Path(__file__).parent
STORE = HERE / "store"
ARTICLES = HERE / "kb"


class DemoSet(StrEnum):
    DEMO = "demo"
    TAU2 = "tau2"


@dataclass(frozen=True)
class DemoData:
    """Where one demo set's store (``db.json``, ``policy.md``), articles and tickets are."""

    name: DemoSet
    store: Path
    articles: tuple[Path, ...]
    tickets: Path


class DemoDataMissing(LookupError):
    """The chosen set is not on this machine; the message says how to get it."""


def demo_data(name: DemoSet, data_dir: Path, *elsewhere: Path) -> DemoData:
    """The files of demo set ``name``; ``DemoDataMissing`` when tau2 was never fetched (nor is
    in one of the folders ``elsewhere``)."""
    from clients.data import DATA_SET_HELP, find_data_set

    if name is DemoSet.DEMO:
        return DemoData(name, STORE, (ARTICLES,), HERE / "tickets.jsonl")
    root = find_data_set("tau2", data_dir, *elsewhere)
    if root is None:
        raise DemoDataMissing(f"the tau2 demo {DATA_SET_HELP}")
    tau2 = root / "tau2"
    return DemoData(
        name,
        tau2 / "retail",
        (ARTICLES, tau2 / "banking_knowledge" / "documents"),
        HERE / "tau2_tickets.jsonl",
    )
