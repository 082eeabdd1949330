"""The input limits and composite keys, with no I/O (servers/runtime/limits.py, keys.py)."""

import json

from hypothesis import given
from hypothesis import strategies as st

from servers.runtime.keys import joined_key
from servers.runtime.limits import MAX_ARGUMENT_DEPTH, argument_problem, check_message

ids = st.text(alphabet=st.sampled_from(":%a3A_\ud800") | st.characters())


@given(st.integers(1, 4).flatmap(lambda n: st.tuples(*[st.tuples(ids, ids)] * n)))
def test_composite_keys_are_equal_only_for_equal_ids(pairs: tuple[tuple[str, str], ...]) -> None:
    """Keys of one kind have a fixed number of parts: for those, one key is one tuple of ids."""
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    assert (joined_key(*a) == joined_key(*b)) == (a == b)


def test_plain_ids_read_unchanged_in_keys() -> None:
    assert (
        joined_key("session", "mia_garcia_4516", "chat-1.2") == "session:mia_garcia_4516:chat-1.2"
    )
    assert joined_key("session", "A:chat", "42") == "session:A%3Achat:42"


def call(arguments: str, id: str = "1") -> bytes:
    params = f'{{"name":"t","arguments":{arguments}}}'
    return f'{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{params}}}'.encode()


def test_well_formed_messages_pass() -> None:
    assert (
        check_message(call('{"a": [1, 2.5, "x", null, true, {"b": -9223372036854775808}]}')) is None
    )
    assert check_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}') is None


def test_bad_numbers_in_arguments_are_tool_errors_naming_the_field() -> None:
    for token, reason in [
        ("NaN", "must be a finite number"),
        ("-Infinity", "must be a finite number"),
        ("1e999", "must be a finite number"),
        ("9223372036854775808", "integer out of range"),
        ("9" * 5000, "integer out of range"),
    ]:
        refusal = check_message(call(f'{{"a": {{"b": [0, {token}]}}}}'))
        assert refusal is not None and refusal.status == 200
        assert refusal.reply["id"] == 1
        text = refusal.reply["result"]["content"][0]["text"]
        assert text.startswith(f"invalid_argument: a.b.1: {reason}"), text


def test_problems_outside_the_arguments_are_json_rpc_errors() -> None:
    for body, code, message in [
        (b"{not json", -32700, "invalid_argument: body: not JSON"),
        (b"[" * 5000 + b"]" * 5000, -32600, "invalid_argument: body: nested deeper than 64"),
        (call("{}", id="1e999"), -32600, "invalid_argument: id: must be a finite number"),
        (call("{}", id='"\\ud800"'), -32600, "invalid_argument: id: text must be valid Unicode"),
        (call("[1]"), -32602, "invalid_argument: params.arguments: must be an object"),
    ]:
        refusal = check_message(body)
        assert refusal is not None and refusal.status == 400
        assert refusal.reply["error"]["code"] == code
        assert refusal.reply["error"]["message"].startswith(message)
        json.dumps(refusal.reply, ensure_ascii=False).encode()  # printable whatever was sent


def test_arguments_may_nest_to_the_limit_and_no_further() -> None:
    def nested(levels: int) -> object:
        value: object = 1
        for _ in range(levels):
            value = [value]
        return value

    assert argument_problem({"a": nested(MAX_ARGUMENT_DEPTH)}) is None
    assert argument_problem({"a": nested(MAX_ARGUMENT_DEPTH + 1)}) == (
        "a" + ".0" * MAX_ARGUMENT_DEPTH,
        f"nested deeper than {MAX_ARGUMENT_DEPTH} levels",
    )
