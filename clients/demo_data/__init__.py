"""The demo data ``supportmesh up`` loads into an empty mesh: a store of 60 customers and its
policy (``store/``, made by ``build_store.py``) and a knowledge base of 47 articles (``kb/``)
that agree with each other and with the rules of the orchestrator's offline policy."""

from pathlib import Path

STORE = Path(__file__).parent / "store"
ARTICLES = Path(__file__).parent / "kb"
