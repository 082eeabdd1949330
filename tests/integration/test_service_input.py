"""The orchestrator service's HTTP API under hostile input, one defect at a time and then at
random: every answer is a success or the documented JSON error (``ServiceError``), never a 5xx,
plain text or a stream that does not end; nothing is written by a refused request.

One service (``supportmesh orchestrator`` in a subprocess) serves the whole module, over the
five servers on streamable HTTP.
"""

import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.orchestrator import OrchestratorClient
from schemas.errors import ErrorCode
from schemas.orchestrator import Replay, Resume, ServiceError, TicketSubmission
from schemas.roles import Role
from servers.runtime.settings import Settings
from tests.conftest import SERVED_DATABASES, supportmesh_env, token
from tests.integration.test_orchestrator_service import service
from tests.strategies import HOSTILE, from_schema, fuzz, hostile_arguments, inline_refs, to_json

CALLS_PER_ENDPOINT = int(os.environ.get("SUPPORTMESH_FUZZ_CALLS", "200"))
FUZZ_SEED = int(os.environ.get("SUPPORTMESH_FUZZ_SEED") or random.randrange(2**32))
HUGE = "9" * 5000  # past int()'s 4,300 digits
QUESTION = {"subject": "Password", "description": "How do I reset my password? I can't log in."}
CODES = {code.value for code in ErrorCode}


@pytest.fixture(scope="module")
def service_url(
    settings: Settings,
    ticketing_http: str,
    crm_http: str,
    knowledge_http: str,
    memory_http: str,
    approvals_http: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    urls = {
        "ticketing": ticketing_http,
        "crm": crm_http,
        "knowledge": knowledge_http,
        "memory": memory_http,
        "approvals": approvals_http,
    }
    env = supportmesh_env(settings) | {
        "SUPPORTMESH_MCP_URLS": json.dumps(urls),
        "SUPPORTMESH_ORCHESTRATOR_GROUP": f"orchestrator-input-{uuid.uuid4().hex[:8]}",
        "SUPPORTMESH_ORCHESTRATOR_OFFSET_RESET": "latest",
    }
    log: Path = tmp_path_factory.mktemp("service") / "service.log"
    with service(env, log) as (_, url):
        yield url


@pytest.fixture(scope="module")
async def resolved(service_url: str, settings: Settings) -> AsyncIterator[tuple[int, list[int]]]:
    """A ticket whose run has ended, and its event ids."""
    async with OrchestratorClient(service_url, token(settings)) as client:
        submitted = await client.submit(TicketSubmission.model_validate(QUESTION))
        ids = [event.id async for event in client.events(submitted.ticket_id)]
        assert (await client.ticket(submitted.ticket_id)).status == "resolved"
        yield submitted.ticket_id, ids


def http(settings: Settings, role: Role = Role.ADMIN) -> httpx.Client:
    bearer = token(settings, role, "hostile")
    return httpx.Client(headers={"Authorization": f"Bearer {bearer}"}, timeout=30)


def refused(answer: httpx.Response, status: int, field: str | None) -> ServiceError:
    """The answer is the documented error, with ``status`` and naming ``field``."""
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    error = ServiceError.model_validate_json(answer.content)
    assert error.field == field, error
    assert error.error in CODES and error.message.startswith(f"{error.error}: "), error
    return error


# --- numbers -----------------------------------------------------------------------------------


def test_numbers_past_64_bits_in_paths_and_queries_are_400_naming_the_field(
    service_url: str, settings: Settings, resolved: tuple[int, list[int]]
) -> None:
    """Ids of more than 4,300 digits and ?limit= of 5,000 answered a plain-text 500."""
    ticket_id, _ = resolved
    with http(settings) as client:
        for path in ("", "/history", "/events"):
            refused(client.get(f"{service_url}/tickets/{HUGE}{path}"), 400, "ticket_id")
        for path, body in (
            ("resume", {"approval_id": "apr_1"}),
            ("replay", {"checkpoint_id": "c"}),
        ):
            answer = client.post(f"{service_url}/tickets/{HUGE}/{path}", json=body)
            refused(answer, 400, "ticket_id")
        history = client.get(f"{service_url}/tickets/{ticket_id}/history?limit={HUGE}")
        refused(history, 400, "limit")
        refused(client.get(f"{service_url}/tickets/{ticket_id}/events?after={HUGE}"), 400, "after")


def test_a_nul_or_a_lone_surrogate_in_a_body_is_400_naming_the_field(
    service_url: str, settings: Settings, resolved: tuple[int, list[int]]
) -> None:
    """A NUL in checkpoint_id reached PostgreSQL (psycopg.DataError, a 500)."""
    ticket_id, _ = resolved
    headers = {"content-type": "application/json"}
    with http(settings) as client:
        replay = client.post(
            f"{service_url}/tickets/{ticket_id}/replay",
            content=b'{"checkpoint_id": "1f0\\u0000"}',
            headers=headers,
        )
        assert "NUL" in refused(replay, 400, "checkpoint_id").message
        resume = client.post(
            f"{service_url}/tickets/{ticket_id}/resume",
            content=b'{"approval_id": "\\ud800"}',
            headers=headers,
        )
        refused(resume, 400, "approval_id")
        deep = client.post(f"{service_url}/tickets", content=b"[" * 100 + b"]" * 100)
        refused(deep, 400, "body")


# --- routes ------------------------------------------------------------------------------------


def test_unmatched_routes_and_methods_answer_the_json_error_shape(
    service_url: str, settings: Settings
) -> None:
    """Starlette answered plain-text 404 and 405."""
    with http(settings) as client:
        refused(client.get(f"{service_url}/nowhere"), 404, "path")
        refused(client.get(f"{service_url}/tickets/1/nothing/here"), 404, "path")
        wrong = client.put(f"{service_url}/tickets", json={})
        refused(wrong, 405, "method")
        assert wrong.headers["allow"] == "POST"
        deleted = client.delete(f"{service_url}/tickets/1")
        assert "GET" in refused(deleted, 405, "method").message
        assert "GET" in deleted.headers["allow"]


# --- the event stream --------------------------------------------------------------------------


def test_a_stream_reconnecting_after_an_ended_runs_last_event_ends_at_once(
    service_url: str, settings: Settings, resolved: tuple[int, list[int]]
) -> None:
    """Last-Event-ID equal to the last event (what a client sends after reading everything)
    returned nothing and never ended; ids past the end did the same."""
    ticket_id, ids = resolved
    events = f"{service_url}/tickets/{ticket_id}/events"
    with http(settings, Role.AGENT) as client:
        started = time.monotonic()
        caught_up = client.get(events, headers={"Last-Event-ID": str(ids[-1])})
        assert caught_up.status_code == 204 and time.monotonic() - started < 10
        assert client.get(f"{events}?after={ids[-1]}").status_code == 204
        past = client.get(events, headers={"Last-Event-ID": str(ids[-1] + 10**9)})
        refused(past, 400, "Last-Event-ID")
        refused(client.get(events, headers={"Last-Event-ID": "-1"}), 400, "Last-Event-ID")
        other = client.get(f"{service_url}/tickets/{ticket_id + 10**6}/events")
        refused(other, 404, "ticket_id")
        with client.stream("GET", events, headers={"Last-Event-ID": str(ids[-2])}) as rest:
            assert rest.status_code == 200
            sent = [line for line in rest.iter_lines() if line.startswith("id:")]
        assert sent == [f"id: {ids[-1]}"]


async def test_an_event_id_of_another_ticket_is_400(
    service_url: str, settings: Settings, resolved: tuple[int, list[int]]
) -> None:
    _, ids = resolved
    async with OrchestratorClient(service_url, token(settings)) as client:
        other = await client.submit(TicketSubmission.model_validate(QUESTION))
        await client.follow(other.ticket_id)
    with http(settings, Role.AGENT) as plain:
        answer = plain.get(
            f"{service_url}/tickets/{other.ticket_id}/events",
            headers={"Last-Event-ID": str(ids[0])},
        )
        refused(answer, 400, "Last-Event-ID")


# --- idempotency keys --------------------------------------------------------------------------


def test_distinct_idempotency_keys_never_meet_and_long_ones_are_refused(
    service_url: str, settings: Settings
) -> None:
    """The combined key was cut to 200 characters: two 300-character keys differing in the last
    one, or 71 and 72 ':' (213 characters once encoded), opened one ticket between them."""
    with http(settings, Role.AGENT) as client:

        def submit(key: str) -> httpx.Response:
            return client.post(
                f"{service_url}/tickets", json=QUESTION, headers={"Idempotency-Key": key}
            )

        opened = {}
        for key in ("k" * 254 + "a", "k" * 254 + "b", ":" * 71, ":" * 72):
            answer = submit(key)
            assert answer.status_code == 202, answer.text
            opened[key] = answer.json()["ticket_id"]
        assert len(set(opened.values())) == 4
        assert submit(":" * 71).json()["ticket_id"] == opened[":" * 71]  # a retry: one ticket
        too_long = refused(submit("k" * 256), 400, "Idempotency-Key")
        assert "at most 255" in too_long.message


# --- at random ---------------------------------------------------------------------------------

IDS = [HUGE, "0", "-1", "²", "1e3", "%00", "%F0%9F%98%80", "9" * 20, str(2**63), "abc", " 1"]
NUMBERS = [HUGE, "0", "-1", "²", "", "1.5", "9" * 20, str(2**63 - 1), "1e3", " 7", "%00"]
# What a header can carry (HTTP strips the spaces around a value; h11 refuses to send them).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300).map(
    str.strip
)
RAW_BODIES = [b"", b"not json", b"{", b"[" * 1000 + b"]" * 1000, b"NaN", b'{"a": 1e400}', b"\xff"]


def _body(schema: dict[str, Any]) -> st.SearchStrategy[bytes]:
    schema = inline_refs(schema)
    documents = st.one_of(
        from_schema(schema), hostile_arguments(schema), hostile_arguments(schema)
    ).map(lambda value: to_json(value).encode())
    return (
        documents
        | st.sampled_from(RAW_BODIES)
        | st.sampled_from(HOSTILE).map(
            lambda value: to_json(value).encode() if not isinstance(value, str) else b"x"
        )
    )


@st.composite
def requests(draw: st.DrawFn, ticket_id: int, event_ids: list[int]) -> dict[str, Any]:
    """One request to the service: any endpoint, with hostile ids, queries, headers, bodies."""
    ticket = draw(
        st.sampled_from([str(ticket_id), *IDS])
        | st.integers(1, 10**6).map(str)
        | st.text(max_size=20).map(lambda text: quote(text, safe=""))
    )
    number = draw(st.sampled_from([*map(str, event_ids), *NUMBERS]) | HEADER_TEXT)
    headers: dict[str, str] = {"content-type": "application/json"}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(HEADER_TEXT | st.sampled_from(["k" * 256, "x" * 5000]))
    if draw(st.booleans()):
        headers["Last-Event-ID"] = number.strip()
    kind = draw(st.sampled_from(["show", "history", "events", "submit", "resume", "replay", "any"]))
    path, method, body = f"/tickets/{ticket}", "GET", b""
    if kind == "history":
        path += f"/history?limit={quote(number, safe='')}"
    elif kind == "events":
        path += f"/events?after={quote(number, safe='')}" if draw(st.booleans()) else "/events"
    elif kind == "submit":
        path, method = "/tickets", "POST"
        body = draw(_body(TicketSubmission.model_json_schema()))
    elif kind in ("resume", "replay"):
        model = Resume if kind == "resume" else Replay
        path, method, body = f"{path}/{kind}", "POST", draw(_body(model.model_json_schema()))
    elif kind == "any":
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
        path = "/" + quote(draw(st.text(max_size=30)), safe="/")
    auth = draw(st.sampled_from(["admin", "admin", "admin", "none", "garbage"]))
    return {
        "kind": kind,
        "method": method,
        "path": path,
        "headers": headers,
        "body": body,
        "auth": auth,
    }


def _verdict(answer: httpx.Response, lines: list[str]) -> str:
    """``ok`` or the error's code; fails on a 5xx, plain text or an untyped error."""
    assert answer.status_code < 500, f"HTTP {answer.status_code}: {answer.text[:300]}"
    if answer.status_code >= 400:
        error = ServiceError.model_validate_json(answer.content)
        assert error.error in CODES and error.message.startswith(f"{error.error}: "), error
        return error.error
    if answer.is_redirect:  # Starlette's /tickets/ -> /tickets
        assert answer.headers["location"], answer.headers
    elif answer.headers.get("content-type", "").startswith("text/event-stream"):
        assert any(line.startswith("event: run.") for line in lines), lines[-5:]
    elif answer.status_code != 204:
        json.loads(answer.content)
    return "ok"


def new_tickets(database: str, after_id: int) -> set[int]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT id FROM ticketing.tickets WHERE id > %s", [after_id]).fetchall()
    return {int(row[0]) for row in rows}


def test_every_answer_is_a_success_or_the_documented_error(
    service_url: str,
    settings: Settings,
    ticketing_http: str,
    resolved: tuple[int, list[int]],
) -> None:
    ticket_id, event_ids = resolved
    database = SERVED_DATABASES[ticketing_http]
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM ticketing.tickets").fetchone()
    first_ticket = int(row[0]) if row else 0
    bearer = {"admin": f"Bearer {token(settings, Role.ADMIN, 'fuzz')}", "garbage": "Bearer x.y.z"}
    opened: set[int] = set()
    outcomes: dict[tuple[str, str], int] = {}

    with httpx.Client(base_url=service_url, timeout=30) as client:

        @fuzz(CALLS_PER_ENDPOINT * 6, FUZZ_SEED, __file__)
        @given(sent=requests(ticket_id, event_ids))
        def send_anything(sent: dict[str, Any]) -> None:
            # As bytes: UTF-8 beyond ASCII goes as HTTP's obs-text, which servers read as Latin-1.
            headers = {name: value.encode() for name, value in sent["headers"].items()}
            if sent["auth"] in bearer:
                headers["Authorization"] = bearer[sent["auth"]].encode()
            request = client.build_request(
                sent["method"], sent["path"], content=sent["body"], headers=headers
            )
            deadline = time.monotonic() + 30
            lines: list[str] = []
            try:
                answer = client.send(request, stream=True)
                try:
                    if not answer.headers.get("content-type", "").startswith("text/event-"):
                        answer.read()
                    else:
                        for line in answer.iter_lines():  # a stream must end: the runs have
                            lines.append(line)
                            assert time.monotonic() < deadline, f"still streaming: {sent}"
                finally:
                    answer.close()
            except httpx.TimeoutException as exc:
                raise AssertionError(f"no answer in 30 s: {sent}") from exc
            verdict = _verdict(answer, lines)
            if sent["path"] == "/tickets" and answer.status_code == 202:
                opened.add(int(answer.json()["ticket_id"]))
            key = (sent["kind"], verdict)
            outcomes[key] = outcomes.get(key, 0) + 1

        send_anything()

    # A refused submission opened nothing: every ticket made since is one the service answered.
    assert new_tickets(database, first_ticket) == opened, outcomes
    print(sorted(outcomes.items()))  # shown with -s
    assert any(verdict == "ok" for _, verdict in outcomes), outcomes
