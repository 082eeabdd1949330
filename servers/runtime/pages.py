"""Cursor pagination: an opaque cursor carries the last row's sort key and what was asked.

A cursor from one query cannot be used with another (other filters): ``invalid_argument``. So
is one edited by hand into anything the database could not take (text with NUL, an integer
past 64 bits, a number that is not finite).
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any

from servers.runtime.errors import InvalidArgument
from servers.runtime.limits import json_problem


def query_digest(query: dict[str, Any]) -> str:
    canonical = json.dumps(query, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_cursor(key: list[Any], query: dict[str, Any]) -> str:
    raw = json.dumps({"k": key, "q": query_digest(query)}, default=str, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(
    cursor: str, query: dict[str, Any], tool: str, key: tuple[Callable[[Any], Any], ...]
) -> list[Any]:
    """The sort key in ``cursor``, which must come from ``tool`` with the same ``query``.

    ``key`` parses each part of the sort key (``datetime.fromisoformat``, ``int``, ``UUID``...),
    so that a cursor edited by hand is refused here rather than by the database.
    """
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        parts, digest = doc["k"], doc["q"]
        if not isinstance(parts, list) or len(parts) != len(key):
            raise TypeError("key")
        parsed = [parse(part) for parse, part in zip(key, parts, strict=True)]
        if json_problem(parsed, 1):
            raise ValueError("a key the database cannot take")
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
        binascii.Error,
    ) as exc:
        raise InvalidArgument("cursor", f"not a cursor returned by {tool}") from exc
    if digest != query_digest(query):
        raise InvalidArgument("cursor", "belongs to a query with other filters")
    return parsed
