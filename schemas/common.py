"""Field types shared by every server's contracts.

Tool inputs take JSON's own types: an integer is a JSON integer (not ``true`` or ``"12"``),
hence ``StrictInt`` and ``StrictBool`` in tool signatures. The documented exceptions are the
types JSON has no literal for: a date-time is an ISO 8601 string (``Timestamp``, never a
number), and money a number or a decimal string.
"""

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

CustomerId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="The CRM customer id, e.g. 'mia_garcia_4516'."),
]

IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    Field(
        description="Any unique string; repeating a call with the same key changes nothing "
        "and returns the first result. Use one per intended write."
    ),
]


def _iso_text(value: object) -> object:
    if isinstance(value, str | datetime):
        return value
    raise PydanticCustomError("datetime_type", "must be an ISO 8601 date-time string")


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _in_utc(value: datetime) -> datetime:
    """The time in UTC (no timezone means UTC), from ``EARLIEST`` to ``LATEST``: a bound near the
    calendar's ends, or moved past them by its offset, breaks a window's arithmetic (the day
    before, the week it starts in), so it is refused where it is parsed."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # the offset moved it past year 1 or 9999
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise PydanticCustomError(
            "datetime_range",
            f"must be from {EARLIEST:%Y-%m-%dT%H:%M:%SZ} to {LATEST:%Y-%m-%dT%H:%M:%SZ} in UTC",
        )
    return utc


Timestamp = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_in_utc)]
"""A date-time in a tool's input: an ISO 8601 string such as '2026-11-30T09:00:00Z', read as
UTC when it names no timezone, from 1970 to 9999."""

MAX_JSON_DEPTH = 8
MAX_JSON_BYTES = 16 * 1024


def _depth(value: Any, limit: int) -> int:
    """How deep objects and arrays nest in ``value`` (counting stops past ``limit``)."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(item, limit - 1) for item in items), default=0)


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise PydanticCustomError("json_depth", f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise PydanticCustomError("json_type", "must be plain, finite JSON") from exc
    if size > MAX_JSON_BYTES:
        raise PydanticCustomError("json_size", f"larger than {MAX_JSON_BYTES} bytes as JSON")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_json)]
"""A free-form JSON object in a tool's input, bounded: at most ``MAX_JSON_DEPTH`` levels deep
and ``MAX_JSON_BYTES`` as UTF-8 JSON, so that no stored value can break a later read."""
