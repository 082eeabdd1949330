"""Every tool of every server, called over real streamable HTTP as an attacker would.

Arguments are drawn from each tool's published input schema (``tests/strategies.py``), then
broken: wrong types, missing and unknown fields, 1 MB strings, NUL, lone surrogates, NaN and
Infinity, 5,000-digit numbers, nesting up to 10,000 deep, forged cursors. Every reply must be
a result or a typed error (one of the six codes, naming what was wrong): never a generic
"Error calling tool", an HTTP 5xx, an untyped JSON-RPC error or a hang. Afterwards every row
the run added to the audit log (each write commits with one) is explained by a successful call
of that tool: a tool that never succeeded wrote nothing.

``SUPPORTMESH_FUZZ_CALLS`` sets the calls per tool (default 200). Each run draws a new seed; a
failure prints the failing call and ``SUPPORTMESH_FUZZ_SEED=<seed>``, which replays the run.
"""

import os
import random
import re
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.registry import SERVERS
from schemas.roles import Role
from servers.runtime.settings import Settings
from tests.conftest import SERVED_DATABASES, token
from tests.strategies import (
    HOSTILE,
    WRONG_TYPES,
    forged_cursors,
    from_schema,
    fuzz,
    hostile_arguments,
    to_json,
)

CALLS_PER_TOOL = int(os.environ.get("SUPPORTMESH_FUZZ_CALLS", "200"))
FUZZ_SEED = int(os.environ.get("SUPPORTMESH_FUZZ_SEED") or random.randrange(2**32))
TYPED = re.compile(
    r"^(invalid_argument|not_found|conflict|permission_denied|unauthenticated|unavailable): \S"
)


def rpc(client: httpx.Client, url: str, method: str, params_json: str) -> httpx.Response:
    body = f'{{"jsonrpc":"2.0","id":7,"method":"{method}","params":{params_json}}}'
    return client.post(url, content=body.encode())


def arguments_for(tool: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """What the fuzz sends a tool: valid arguments, broken ones, and forged cursors."""
    schema = tool["inputSchema"]
    choices = [from_schema(schema), hostile_arguments(schema), hostile_arguments(schema)]
    if "cursor" in schema.get("properties", {}):
        cursor = forged_cursors().map(lambda forged: {"cursor": forged})
        choices.append(st.tuples(from_schema(schema), cursor).map(lambda p: p[0] | p[1]))
    return st.one_of(choices)


def outcome(reply: httpx.Response) -> str:
    """``ok``, or the typed error's code; fails the test on anything untyped."""
    assert reply.status_code < 500, f"HTTP {reply.status_code}: {reply.text[:500]}"
    message = reply.json()
    if "error" in message:  # refused before the SDK: must say what, as invalid_argument
        error = message["error"]
        assert reply.status_code in (400, 413), reply.text[:500]
        assert error.get("data", {}).get("code") == "invalid_argument", error
        assert TYPED.match(error["message"]), error
        return "invalid_argument"
    result = message["result"]
    if not result.get("isError"):
        assert "structuredContent" in result, result
        return "ok"
    text = str(result["content"][0]["text"])
    assert TYPED.match(text), f"untyped tool error: {text[:500]}"
    return text.split(":", 1)[0]


def audit_rows(postgres_url: str, schema: str, after_id: int) -> Counter[str]:
    """Audit rows by tool written after ``after_id`` (every write commits one)."""
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            f"SELECT tool, count(*) FROM {schema}.audit WHERE id > %s GROUP BY tool", [after_id]
        ).fetchall()
    return Counter({tool: count for tool, count in rows})


def last_audit_id(postgres_url: str, schema: str) -> int:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {schema}.audit").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the 1 MB string, on purpose
def test_every_reply_is_a_result_or_a_typed_error(
    server: str, request: pytest.FixtureRequest, settings: Settings
) -> None:
    url: str = request.getfixturevalue(f"{server}_http")
    database = SERVED_DATABASES[url]
    headers = {
        "Authorization": f"Bearer {token(settings, Role.ADMIN, 'fuzz')}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    with httpx.Client(headers=headers, timeout=60) as client:
        tools = rpc(client, url, "tools/list", "{}").json()["result"]["tools"]
        strategies = {tool["name"]: arguments_for(tool) for tool in tools}
        first_audit = last_audit_id(database, server)
        outcomes: Counter[tuple[str, str]] = Counter()

        @fuzz(CALLS_PER_TOOL * len(tools), FUZZ_SEED, __file__)
        @given(data=st.data())
        def call_anything(data: st.DataObject) -> None:
            name = data.draw(st.sampled_from(sorted(strategies)), label="tool")
            arguments = data.draw(strategies[name], label="arguments")
            params = f'{{"name":"{name}","arguments":{to_json(arguments)}}}'
            try:
                reply = rpc(client, url, "tools/call", params)
            except httpx.TimeoutException as exc:
                raise AssertionError(f"{name} did not answer in 60 s") from exc
            outcomes[name, outcome(reply)] += 1

        call_anything()

    succeeded = Counter({name: n for (name, code), n in outcomes.items() if code == "ok"})
    # Sweeps write too (expiring approvals, say), under names that are not tools: not counted.
    written = audit_rows(database, server, first_audit)
    unexplained = {t: n for t, n in written.items() if t in strategies and n > succeeded[t]}
    assert not unexplained, f"writes without a successful call: {unexplained}; {outcomes}"
    print(f"{server}: {sorted(outcomes.items())}")  # shown with -s, and on failure
    called = Counter(name for name, _ in outcomes.elements())
    assert len(called) == len(tools), f"tools never called: {set(strategies) - set(called)}"


# --- resources, prompts and completions ----------------------------------------------------------

RPC_CODES = {-32602, -32002, -32600, -32700}  # invalid params, resource not found, the transport's
ID_TEXT = (
    st.text(max_size=30)
    | st.sampled_from([s for s in HOSTILE if isinstance(s, str)])
    | st.integers(-5, 2**70).map(str)
    | st.sampled_from(["1", "²", "9" * 5000, "0", "-1", "a/b", "%", "../x", "apr_1", "mia_li_1"])
)


def rpc_outcome(reply: httpx.Response) -> str:
    """``ok``, or the typed error's code, for a request that is not a tool call."""
    assert reply.status_code < 500, f"HTTP {reply.status_code}: {reply.text[:500]}"
    message = reply.json()
    if "result" in message:
        return "ok"
    error = message["error"]
    assert error["code"] in RPC_CODES, error
    assert TYPED.match(error["message"]), f"untyped error: {error}"
    assert error.get("data", {}).get("code") == error["message"].split(":", 1)[0], error
    return str(error["message"].split(":", 1)[0])


def _filled(template: str, values: list[str]) -> str:
    """``template`` with each ``{name}`` replaced by one of ``values``, percent-encoded."""
    parts = re.split(r"\{[^}]+\}", template)
    encoded = [quote(value, safe="", errors="surrogatepass") for value in values]
    return parts[0] + "".join(e + rest for e, rest in zip(encoded, parts[1:], strict=True))


@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_every_resource_prompt_and_completion_answer_is_a_result_or_a_typed_error(
    server: str, request: pytest.FixtureRequest, settings: Settings
) -> None:
    """resources/read on every template with ids as an attacker writes them (NUL, '²',
    5,000 digits, surrogates, slashes), on the fixed resources and on URIs of no resource;
    prompts/get with arguments missing, unknown, hostile or of the wrong type, and prompts
    that do not exist; completion/complete with hostile values."""
    url: str = request.getfixturevalue(f"{server}_http")
    headers = {
        "Authorization": f"Bearer {token(settings, Role.ADMIN, 'fuzz')}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    with httpx.Client(headers=headers, timeout=60) as client:
        templates = [
            t["uriTemplate"]
            for t in rpc(client, url, "resources/templates/list", "{}").json()["result"][
                "resourceTemplates"
            ]
        ]
        fixed = [
            r["uri"] for r in rpc(client, url, "resources/list", "{}").json()["result"]["resources"]
        ]
        prompts = rpc(client, url, "prompts/list", "{}").json()["result"]["prompts"]
        outcomes: Counter[tuple[str, str]] = Counter()

        @st.composite
        def requests(draw: st.DrawFn) -> tuple[str, str]:
            kinds = ["nowhere"] + ["template"] * bool(templates) + ["fixed"] * bool(fixed)
            kinds += ["prompt", "prompt", "complete"] * bool(prompts) + ["no prompt"]
            kind = draw(st.sampled_from(kinds))
            if kind in ("template", "fixed", "nowhere"):
                if kind == "template":
                    template = draw(st.sampled_from(templates))
                    uri = _filled(template, [draw(ID_TEXT) for _ in re.findall("{", template)])
                elif kind == "fixed":
                    uri = draw(st.sampled_from(fixed))
                else:
                    uri = draw(st.sampled_from(["nowhere://x", "tickets://", "kb://", "x"]))
                return "resources/read", to_json({"uri": uri})
            prompt: dict[str, Any] = draw(st.sampled_from(prompts)) if prompts else {"name": "x"}
            declared = [a["name"] for a in prompt.get("arguments", [])]
            if kind == "complete":
                ref = {"type": "ref/prompt", "name": prompt["name"]}
                if bool(templates) and draw(st.booleans()):
                    ref = {"type": "ref/resource", "uri": draw(st.sampled_from(templates))}
                name = draw(st.sampled_from(declared or ["x"]) | st.text(max_size=10))
                argument = {"name": name, "value": draw(ID_TEXT)}
                return "completion/complete", to_json({"ref": ref, "argument": argument})
            name = prompt["name"] if kind == "prompt" else draw(st.text(max_size=20))
            values = st.one_of(ID_TEXT, st.sampled_from(WRONG_TYPES), st.sampled_from(HOSTILE))
            arguments = {a: draw(values) for a in declared if draw(st.integers(0, 4))}
            if draw(st.integers(0, 3)) == 0:
                arguments[draw(st.text(max_size=10))] = draw(ID_TEXT)
            return "prompts/get", to_json({"name": name, "arguments": arguments})

        @fuzz(CALLS_PER_TOOL * 2, FUZZ_SEED, __file__)
        @given(sent=requests())
        def send_anything(sent: tuple[str, str]) -> None:
            method, params = sent
            try:
                reply = rpc(client, url, method, params)
            except httpx.TimeoutException as exc:
                raise AssertionError(f"{method} did not answer in 60 s") from exc
            outcomes[method, rpc_outcome(reply)] += 1

        send_anything()
    print(f"{server}: {sorted(outcomes.items())}")  # shown with -s, and on failure
