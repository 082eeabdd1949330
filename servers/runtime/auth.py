"""Who is calling a tool, and what they may do (DESIGN §7).

Over HTTP every request carries a bearer JWT, verified here as an OAuth 2.1 resource server
(signature, expiry, issuer, audience) by fastmcp's ``JWTVerifier``; the server publishes its
protected-resource metadata (RFC 9728) at ``/.well-known/oauth-protected-resource/mcp``. The
token's ``sub`` is the actor and its ``scope`` claim the scopes. Over stdio and in-process
there is no token: calls act as ``SUPPORTMESH_ACTOR`` with the scopes of ``SUPPORTMESH_ROLE``.

Tokens are minted by ``supportmesh token issue`` (PyJWT, HS256) from the signing key in
settings, or from one made on first use under the data directory, for at most
``MAX_TOKEN_SECONDS``. With ``auth_jwks_uri`` set, tokens come from an identity provider instead
and are verified against its keys (RS256). Whoever minted it, a token must carry ``exp`` and a
non-empty ``sub``; ``nbf`` and ``iat``, when present, may not lie in the future by more than
``CLOCK_LEEWAY_SECONDS`` (clocks differ a little between machines, not by an hour).

Every tool needs the ``agent`` scope unless its server says otherwise (``new_server``'s
``scopes``). A caller without the scope a tool needs gets ``permission_denied`` — over HTTP as
a 403 with ``WWW-Authenticate: Bearer error="insufficient_scope"`` (the MCP step-up challenge).
The trace id comes from the request's ``_meta`` (``trace_id``, or a W3C ``traceparent``).
"""

import logging
import os
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from fastmcp import Context
from fastmcp.server.auth import AccessToken, RemoteAuthProvider
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.server.dependencies import get_access_token
from pydantic import AnyHttpUrl

from schemas.roles import ROLE_SCOPES, Role
from servers.runtime.errors import PermissionDenied
from servers.runtime.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_SCOPE = "agent"
KEY_FILE = "auth-signing-key"
MAX_TOKEN_SECONDS = 7 * 24 * 3600  # the longest lifetime `token issue` mints
CLOCK_LEEWAY_SECONDS = 60


@dataclass(frozen=True)
class Caller:
    """Who is calling (for audit and history), what they may do, and the trace of the call."""

    actor: str
    scopes: frozenset[str] = frozenset(ROLE_SCOPES[Role.AGENT])
    trace_id: str | None = None

    def require(self, scope: str, what: str) -> None:
        """Raise ``permission_denied`` unless the caller has ``scope``."""
        if scope not in self.scopes:
            raise PermissionDenied("scope", f"{what} needs the '{scope}' scope")


def local_caller(settings: Settings) -> Caller:
    """The identity of stdio and in-process calls."""
    return Caller(actor=settings.actor, scopes=frozenset(ROLE_SCOPES[settings.role]))


def token_caller() -> Caller | None:
    """The caller a verified bearer token names, or None when the call came without one."""
    token = get_access_token()
    if token is None:
        return None
    return Caller(
        actor=str(token.claims.get("sub") or token.client_id), scopes=frozenset(token.scopes)
    )


def current_caller(ctx: Context, settings: Settings) -> Caller:
    caller = token_caller() or local_caller(settings)
    meta: dict[str, Any] = {}
    request_meta = ctx.request_context.meta if ctx.request_context else None
    if request_meta is not None:
        meta = request_meta.model_dump(exclude_none=True)
    trace_id = meta.get("trace_id")
    if trace_id is None and isinstance(meta.get("traceparent"), str):
        parts = meta["traceparent"].split("-")
        trace_id = parts[1] if len(parts) == 4 else None
    if trace_id:
        return Caller(actor=caller.actor, scopes=caller.scopes, trace_id=str(trace_id))
    return caller


def signing_key(settings: Settings) -> str:
    """The HS256 key: from settings, or the data directory's (made on first use, mode 0600)."""
    if settings.auth_signing_key is not None:
        return settings.auth_signing_key.get_secret_value()
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def issue_token(settings: Settings, role: Role, subject: str, ttl_seconds: int = 8 * 3600) -> str:
    """A signed bearer token for ``subject`` with ``role``'s scopes, valid for ``ttl_seconds``
    (at most ``MAX_TOKEN_SECONDS``)."""
    if not 0 < ttl_seconds <= MAX_TOKEN_SECONDS:
        raise ValueError(f"a token lives from 1 to {MAX_TOKEN_SECONDS} seconds")
    if not subject.strip():
        raise ValueError("a token needs a subject")
    now = int(time.time())
    claims = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": subject,
        "scope": " ".join(ROLE_SCOPES[role]),
        "role": role.value,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, signing_key(settings), algorithm="HS256")


def claims_problem(claims: dict[str, Any], now: float) -> str | None:
    """Why a verified token's claims are still refused, or None: ``exp`` and ``sub`` are
    required, ``nbf`` and ``iat`` honoured with ``CLOCK_LEEWAY_SECONDS`` of leeway."""

    def number(name: str) -> float | None:
        value = claims.get(name)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    if number("exp") is None:
        return "no exp claim: a token must expire"
    if not isinstance(claims.get("sub"), str) or not claims["sub"].strip():
        return "no sub claim: a token must name who it stands for"
    for name in ("nbf", "iat"):
        if name in claims:
            at = number(name)
            if at is None:
                return f"{name} is not a number"
            if at > now + CLOCK_LEEWAY_SECONDS:
                return f"{name} lies in the future"
    return None


class RememberingVerifier(JWTVerifier):
    """A ``JWTVerifier`` that also applies ``claims_problem``, and remembers the tokens it
    accepted until they expire.

    A client sends the same token with every request; checking its signature and claims once
    is enough. Holds at most ``size`` tokens, dropping the oldest.
    """

    def __init__(self, size: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.accepted: OrderedDict[str, AccessToken] = OrderedDict()

    async def verify_token(self, token: str) -> AccessToken | None:
        known = self.accepted.get(token)
        if known is not None and known.expires_at is not None and known.expires_at > time.time():
            return known
        verified = await super().verify_token(token)
        if verified is not None and (problem := claims_problem(verified.claims, time.time())):
            log.info("Bearer token rejected for %s: %s", verified.client_id, problem)
            verified = None
        self.accepted.pop(token, None)
        if verified is not None and verified.expires_at is not None:
            self.accepted[token] = verified
            while len(self.accepted) > self.size:
                self.accepted.popitem(last=False)
        return verified


def token_verifier(settings: Settings) -> RememberingVerifier:
    """What checks the bearer tokens of HTTP requests: the identity provider's keys when
    ``auth_jwks_uri`` is set, else the signing key ``supportmesh token issue`` signs with."""
    if settings.auth_jwks_uri:
        return RememberingVerifier(
            jwks_uri=settings.auth_jwks_uri,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            algorithm="RS256",
        )
    return RememberingVerifier(
        public_key=signing_key(settings),
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithm="HS256",
    )


def http_auth(settings: Settings, base_url: str) -> RemoteAuthProvider | None:
    """The resource-server auth of an HTTP server at ``base_url``, or None when turned off."""
    if not settings.http_auth:
        log.warning(
            "HTTP authentication is OFF (SUPPORTMESH_HTTP_AUTH=false): anyone who can "
            "reach %s acts as %s",
            base_url,
            settings.actor,
        )
        return None
    return RemoteAuthProvider(
        token_verifier=token_verifier(settings),
        authorization_servers=[AnyHttpUrl(settings.auth_issuer)],
        base_url=base_url,
        scopes_supported=sorted({s for scopes in ROLE_SCOPES.values() for s in scopes}),
        resource_name="SupportMesh",
    )
