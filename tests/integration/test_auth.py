"""Authentication and roles over real streamable HTTP (servers in subprocesses), and the local
identity of in-process and stdio calls."""

import asyncio
import base64
import time
from typing import Any

import httpx
import jwt
import pytest
from fastmcp import Client
from pydantic import SecretStr

from schemas.roles import Role
from servers.knowledge.server import build_server as build_knowledge
from servers.runtime.auth import MAX_TOKEN_SECONDS, issue_token, signing_key
from servers.runtime.settings import Settings
from tests.conftest import token
from tests.integration.test_ticketing_tools import Db, call, refused

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def forged_token(settings: Settings, **claims: Any) -> str:
    """A token signed with the servers' own key, with ``claims`` changed (None: left out)."""
    good = jwt.decode(token(settings), options={"verify_signature": False})
    changed = {k: v for k, v in (good | claims).items() if v is not None}
    return jwt.encode(changed, signing_key(settings), algorithm="HS256")


async def post(url: str, body: dict[str, Any], bearer: str | None) -> httpx.Response:
    headers = HEADERS | ({"authorization": f"Bearer {bearer}"} if bearer else {})
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url, json=body, headers=headers)


async def test_no_token_is_401_with_where_to_get_one(ticketing_http: str) -> None:
    refused = await post(ticketing_http, LIST_TOOLS, None)
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge
    metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
    async with httpx.AsyncClient() as http:
        metadata = (await http.get(metadata_url)).json()
    assert metadata["resource"].rstrip("/") == ticketing_http
    assert metadata["authorization_servers"] and metadata["scopes_supported"] == [
        "admin",
        "agent",
        "approver",
    ]


async def test_bad_signature_expired_wrong_audience_or_issuer_are_401(
    ticketing_http: str, settings: Settings
) -> None:
    other_key = settings.model_copy(update={"auth_signing_key": SecretStr("x" * 48)})
    forged = issue_token(other_key, Role.ADMIN, "mallory")
    expired = forged_token(settings, exp=int(time.time()) - 60)
    wrong_audience = issue_token(
        settings.model_copy(update={"auth_audience": "another-service"}), Role.AGENT, "a"
    )
    wrong_issuer = issue_token(
        settings.model_copy(update={"auth_issuer": "https://elsewhere.example"}), Role.AGENT, "a"
    )
    # Good claims under alg "none": no signature at all.
    _, claims, _ = token(settings).split(".")
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    unsigned = f"{none}.{claims}."
    for bearer in (forged, expired, wrong_audience, wrong_issuer, unsigned, "not-a-jwt"):
        answer = await post(ticketing_http, LIST_TOOLS, bearer)
        assert answer.status_code == 401, bearer
    assert (await post(ticketing_http, LIST_TOOLS, token(settings))).status_code == 200


async def test_wrong_role_is_403_with_a_typed_error_and_nothing_happens(
    knowledge_http: str, settings: Settings
) -> None:
    delete = tool_call("delete_article", {"article_id": "auth-test-article"})
    agent = await post(knowledge_http, delete, token(settings, Role.AGENT))
    assert agent.status_code == 403
    assert 'error="insufficient_scope"' in agent.headers["www-authenticate"]
    assert 'scope="admin"' in agent.headers["www-authenticate"]
    assert agent.json()["error_description"].startswith("permission_denied: scope: ")
    # An agent still reads; an admin may delete (here: an article that does not exist).
    search = tool_call("search_articles", {"query": "card"})
    assert (await post(knowledge_http, search, token(settings, Role.AGENT))).status_code == 200
    admin = await post(knowledge_http, delete, token(settings, Role.ADMIN))
    assert admin.status_code == 200
    assert admin.json()["result"]["content"][0]["text"].startswith("not_found: article_id")


async def test_the_token_s_subject_is_the_actor(
    ticketing_http: str, settings: Settings, db: Db
) -> None:
    bearer = token(settings, Role.AGENT, "dana@support.example")
    async with Client(ticketing_http, auth=bearer) as client:
        made = await call(client, "create_ticket", subject="Who am I", description="d")
    row = await (
        await db.execute(
            "SELECT actor FROM ticketing.audit WHERE subject = %s", [f"ticket/{made['id']}"]
        )
    ).fetchone()
    assert row == ("dana@support.example",)


async def test_in_process_calls_have_the_configured_role(settings: Settings) -> None:
    agent_only = settings.model_copy(update={"role": Role.AGENT, "actor": "assistant"})
    async with Client(build_knowledge(agent_only)) as client:
        text = await refused(client, "delete_article", article_id="anything")
        assert text == "permission_denied: scope: delete_article needs the 'admin' scope"
        assert (await call(client, "list_articles"))["articles"] is not None


async def test_approvals_over_http_identify_people_by_their_tokens(
    approvals_http: str, settings: Settings
) -> None:
    """Separation of duties with real tokens: the requester is the token's subject."""
    alice = token(settings, Role.AGENT, "alice@support.example")
    bob = token(settings, Role.APPROVER, "bob@support.example")
    async with Client(approvals_http, auth=alice) as client:
        asked = await call(
            client,
            "request_approval",
            subject="order/#W1",
            action_tool="crm.cancel_pending_order",
            reason="duplicate order",
        )
    assert asked["requested_by"] == "alice@support.example"
    decide = tool_call("decide_approval", {"approval_id": asked["id"], "decision": "approve"})
    as_agent = await post(approvals_http, decide, alice)
    assert (
        as_agent.status_code == 403 and 'scope="approver"' in as_agent.headers["www-authenticate"]
    )
    async with Client(approvals_http, auth=bob) as client:
        decided = await call(client, "decide_approval", approval_id=asked["id"], decision="approve")
        mine = await call(
            client, "request_approval", subject="order/#W2", action_tool="x", reason="r"
        )
        text = await refused(client, "decide_approval", approval_id=mine["id"], decision="reject")
    assert decided["decided_by"] == "bob@support.example"
    assert text.startswith("permission_denied: approval_id: you requested this approval")


async def test_an_accepted_token_is_refused_once_it_expires(
    ticketing_http: str, settings: Settings
) -> None:
    """Servers remember tokens they verified, but never past their expiry."""
    brief = issue_token(settings, Role.AGENT, "brief", ttl_seconds=2)
    assert (await post(ticketing_http, LIST_TOOLS, brief)).status_code == 200
    await asyncio.sleep(2.5)
    assert (await post(ticketing_http, LIST_TOOLS, brief)).status_code == 401


async def test_a_token_must_expire_name_its_subject_and_be_valid_already(
    ticketing_http: str, settings: Settings
) -> None:
    """Signed by the right key, yet refused: no exp, no sub, nbf or iat an hour ahead."""
    hour_ahead = int(time.time()) + 3600
    refused = {
        "no exp": forged_token(settings, exp=None),
        "no sub": forged_token(settings, sub=None),
        "blank sub": forged_token(settings, sub="  "),
        "nbf ahead": forged_token(settings, nbf=hour_ahead),
        "iat ahead": forged_token(settings, iat=hour_ahead),
        "nbf not a number": forged_token(settings, nbf="soon"),
    }
    for why, bearer in refused.items():
        assert (await post(ticketing_http, LIST_TOOLS, bearer)).status_code == 401, why
    # A clock a few seconds ahead of ours is a different machine, not a forgery.
    skewed = forged_token(settings, nbf=int(time.time()) + 5, iat=int(time.time()) + 5)
    assert (await post(ticketing_http, LIST_TOOLS, skewed)).status_code == 200


def test_token_issue_mints_at_most_seven_days(settings: Settings) -> None:
    longest = jwt.decode(
        issue_token(settings, Role.AGENT, "a", ttl_seconds=MAX_TOKEN_SECONDS),
        options={"verify_signature": False},
    )
    assert longest["exp"] - longest["iat"] == MAX_TOKEN_SECONDS == 7 * 24 * 3600
    for ttl in (MAX_TOKEN_SECONDS + 1, 0, -60):
        with pytest.raises(ValueError, match="a token lives from 1 to"):
            issue_token(settings, Role.AGENT, "a", ttl_seconds=ttl)
