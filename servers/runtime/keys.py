"""Composite keys: several ids in one string (Redis keys, cache keys, lock and idempotency keys,
Qdrant point ids, queue names).

``joined_key("session", customer_id, session_id)`` percent-encodes each part before joining
them with ``:``, so that no id, whatever characters it holds, can pass for another pair of ids:
customer ``A:chat`` with session ``42`` is ``session:A%3Achat:42``, never ``session:A:chat:42``
(customer ``A``, session ``chat:42``). Ids of letters, digits and ``_.-~`` read unchanged.
"""

from urllib.parse import quote


def joined_key(*parts: str | int) -> str:
    """``parts`` joined by ``:``, each percent-encoded: among keys with the same number of
    parts (every kind of key has a fixed number), one key is one tuple of ids."""
    # surrogatepass: the boundary refuses lone surrogates, but a key is never an error either.
    return ":".join(quote(str(part), safe="", errors="surrogatepass") for part in parts)
