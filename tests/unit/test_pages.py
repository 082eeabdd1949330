"""Cursors: a page's cursor leads to the next page of the same query and nowhere else."""

from datetime import UTC, datetime

import pytest

from servers.runtime.errors import InvalidArgument
from servers.runtime.pages import decode_cursor, encode_cursor

KEY = (datetime.fromisoformat, int)
QUERY = {"status": ["open"], "tag": None}


def test_a_cursor_gives_back_its_sort_key_parsed() -> None:
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    cursor = encode_cursor([at.isoformat(), 42], QUERY)
    assert decode_cursor(cursor, QUERY, "search_tickets", KEY) == [at, 42]


@pytest.mark.parametrize(
    "cursor",
    [
        "bogus",
        encode_cursor(["yesterday", 42], QUERY),  # edited by hand: not a time
        encode_cursor(["2026-11-24T12:00:00+00:00"], QUERY),  # a part missing
        encode_cursor([None, 42], QUERY),
    ],
)
def test_a_cursor_that_is_not_one_is_refused_naming_the_tool(cursor: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode_cursor(cursor, QUERY, "search_tickets", KEY)
    assert str(refused.value) == "invalid_argument: cursor: not a cursor returned by search_tickets"


def test_a_cursor_of_other_filters_is_refused() -> None:
    cursor = encode_cursor(["2026-11-24T12:00:00+00:00", 42], QUERY)
    with pytest.raises(InvalidArgument, match="belongs to a query with other filters"):
        decode_cursor(cursor, {**QUERY, "tag": "vip"}, "search_tickets", KEY)
