"""What a caller may send: checked before the MCP SDK or a tool sees it, on every transport.

A JSON-RPC message (an HTTP body, a stdio line) is refused at once when it is

- larger than the ``max_message_bytes`` setting (HTTP ``413``; a stdio line is dropped), not
  UTF-8 JSON, or nested deeper than ``MAX_MESSAGE_DEPTH``: a JSON-RPC error (``-32700`` /
  ``-32600``) whose message reads ``invalid_argument: body: <reason>``;
- holding a number JSON cannot carry faithfully (``NaN``, ``Infinity``, ``1e400``, an integer
  outside 64 bits) or text PostgreSQL cannot store (NUL, a lone surrogate): inside a
  ``tools/call``'s arguments, a tool error ``invalid_argument: <field>: <reason>``, as if the
  tool had refused it; anywhere else, a JSON-RPC error naming the member.

A ``prompts/get`` is treated as a ``tools/call`` is: a problem in its arguments is a JSON-RPC
error ``-32602`` naming the argument, as if the prompt had refused it. The parameters of
``prompts/get``, ``resources/read`` and ``completion/complete`` are checked against the SDK's
own types first (a prompt argument that is not a string, a URI that is not one), which the SDK
would refuse with an error naming nothing.

The MCP SDK would otherwise answer such messages with HTTP 500 or an error naming no field, or
quietly turn a non-finite number into ``null`` before the tool's own validation runs.
``argument_problem`` is the same check on arguments that arrive already parsed (in-process
calls), run by every server's middleware; resource template parameters, prompt arguments and
completion values, which are strings, pass ``text_problem`` there too, and ids in them that are
numbers pass ``id_number``.
"""

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import mcp.types as mt
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers.runtime import telemetry
from servers.runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_MESSAGE_DEPTH = 64  # a tool's arguments sit 3 levels down: {params: {arguments: {...}}}
MAX_ARGUMENT_DEPTH = 32
MAX_INT = 2**63 - 1  # what PostgreSQL's bigint holds
MIN_INT = -(2**63)
MAX_ID_CHARS = 200  # a resource template's parameter, a completion's typed value
MAX_PROMPT_ARGUMENT_CHARS = 20_000  # a customer's whole message, with room to spare

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
PARSE_ERROR = -32700


@dataclass(frozen=True)
class _Unreadable:
    """A number token parsed as this marker, so that the walk can name where it was."""

    reason: str


NON_FINITE = _Unreadable("must be a finite number (NaN and Infinity are not)")
TOO_LARGE = _Unreadable(f"integer out of range (at most {MAX_INT} in size)")


def _parse_float(token: str) -> float | _Unreadable:
    value = float(token)
    return value if math.isfinite(value) else NON_FINITE


def _parse_int(token: str) -> int | _Unreadable:
    # Refused before int() runs: past 4,300 digits it raises, and it is quadratic before that.
    return int(token) if len(token) <= 20 else TOO_LARGE


def _parse_constant(_: str) -> _Unreadable:
    return NON_FINITE


def field_name(name: str | int) -> str:
    """A field's name as an error may print it: escaped unless it is printable and not blank
    (a key of NUL, a lone surrogate or a line break), quoted when spaces begin or end it, cut
    short past 40 characters."""
    text = str(name)
    if not text.strip() or text != text.strip():
        return ascii(text)  # quoted: a blank name, or spaces around one, must show: "' 0'"
    if not text.isprintable() or _text_problem(text) is not None:
        text = ascii(text)[1:-1]
    return text if len(text) <= 40 else text[:40] + "..."


def _joined(path: tuple[str | int, ...]) -> str:
    """A dotted path that is safe to print: bad keys escaped, long ones cut short."""
    return ".".join(field_name(p) for p in path)


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "text must not contain NUL characters"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "text must be valid Unicode (a lone surrogate is not)"
    return None


def text_problem(text: str, max_chars: int) -> str | None:
    """What no server may take in a string argument (NUL, a lone surrogate, more than
    ``max_chars`` characters), or None."""
    if len(text) > max_chars:
        return f"at most {max_chars} characters"
    return _text_problem(text)


def id_number(text: str, field: str, what: str = "a number") -> int:
    """A record's number written in an id that is text (``tickets://42``): ASCII digits only
    (``str.isdigit`` takes '²', which ``int`` refuses), from 1 to 64 bits; else
    ``invalid_argument`` naming ``field``. The length is checked before ``int()`` runs: past
    4,300 digits it raises, and it is quadratic before that."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= MAX_INT):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidArgument(field, f"{what} from 1 to {MAX_INT}, not {shown!a}")
    return int(text)


def json_problem(
    value: Any, max_depth: int, path: tuple[str | int, ...] = (), depth: int = 0
) -> tuple[str, str] | None:
    """The first place in a parsed JSON value that no tool may take, as (dotted path, reason).

    Refused: text with NUL or a lone surrogate (as a value or a key), numbers that are not
    finite, integers outside 64 bits, and objects or arrays nested deeper than ``max_depth``.
    """
    if isinstance(value, str):
        reason = _text_problem(value)
        return (_joined(path), reason) if reason else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if MIN_INT <= value <= MAX_INT else (_joined(path), TOO_LARGE.reason)
    if isinstance(value, float):
        return None if math.isfinite(value) else (_joined(path), NON_FINITE.reason)
    if isinstance(value, _Unreadable):
        return _joined(path), value.reason
    if isinstance(value, dict | list):
        if depth >= max_depth:
            return _joined(path), f"nested deeper than {max_depth} levels"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and (reason := _text_problem(key)):
                return _joined((*path, key)), f"key: {reason}"
            if found := json_problem(item, max_depth, (*path, key), depth + 1):
                return found
    return None


def argument_problem(arguments: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong with a tool's arguments, as (field, reason), or None.

    The arguments object itself is level 0: ``{"a": {"b": 1}}`` nests one level deep.
    """
    return json_problem(arguments, MAX_ARGUMENT_DEPTH, depth=-1)


@dataclass(frozen=True)
class Refusal:
    """The reply that answers a message instead of the server: ``status`` is for HTTP."""

    status: int
    reply: dict[str, Any]


def _error(status: int, code: int, field: str, reason: str, id: Any = None) -> Refusal:
    message = f"invalid_argument: {field}: {reason}"
    error = {"code": code, "message": message, "data": {"code": "invalid_argument", "field": field}}
    return Refusal(status, {"jsonrpc": "2.0", "id": id, "error": error})


def too_large(max_bytes: int) -> Refusal:
    return _error(413, INVALID_REQUEST, "body", f"larger than {max_bytes} bytes")


def _loads(body: bytes) -> Any:
    """``body`` parsed with every number that JSON cannot carry marked (``_Unreadable``).

    Raises ``RecursionError`` past Python's stack, ``ValueError`` on what is not UTF-8 JSON.
    """
    return json.loads(
        body, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
    )


def body_problem(body: bytes, max_depth: int = MAX_ARGUMENT_DEPTH) -> tuple[str, str] | None:
    """What is wrong with a JSON request body (an HTTP API's, not JSON-RPC), as (field,
    reason), or None: ``body`` when it is not JSON or nests too deep, else the member that
    ``json_problem`` refuses, e.g. ``('checkpoint_id', 'text must not contain NUL characters')``.
    """
    try:
        value = _loads(body)
    except RecursionError:
        return "body", f"nested deeper than {max_depth} levels"
    except ValueError as exc:
        return "body", f"not JSON: {exc}"
    found = json_problem(value, max_depth, depth=-1)
    if found and found[1].startswith("nested deeper"):  # the path down is no help to anyone
        return "body", found[1]
    return found


def check_message(body: bytes) -> Refusal | None:
    """None if the JSON-RPC message ``body`` may go on to the server, else the reply to send."""
    try:
        message = _loads(body)
    except RecursionError:  # nested hundreds deep: json.loads stops at Python's stack limit
        reason = f"nested deeper than {MAX_MESSAGE_DEPTH} levels"
        return _error(400, INVALID_REQUEST, "body", reason)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        return _error(400, PARSE_ERROR, "body", f"not JSON: {exc}")
    if not isinstance(message, dict):  # a batch, or not JSON-RPC at all: the SDK refuses it
        found = json_problem(message, MAX_MESSAGE_DEPTH)
        return _error(400, INVALID_REQUEST, found[0] or "body", found[1]) if found else None
    params = message.get("params")
    if message.get("method") == "tools/call" and isinstance(params, dict):
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            reason = "must be an object of the tool's arguments"
            return _error(400, INVALID_PARAMS, "params.arguments", reason, _safe_id(message))
        # Outside the arguments a problem is the message's; inside, the tool's to refuse.
        envelope = {**message, "params": {**params, "arguments": None}}
        if found := json_problem(envelope, MAX_MESSAGE_DEPTH):
            return _error(400, INVALID_REQUEST, found[0], found[1], _safe_id(message))
        if found := argument_problem(arguments):
            text = f"invalid_argument: {found[0]}: {found[1]}"
            result = {"content": [{"type": "text", "text": text}], "isError": True}
            return Refusal(200, {"jsonrpc": "2.0", "id": _safe_id(message), "result": result})
        return None
    if message.get("method") == "prompts/get" and isinstance(params, dict):
        arguments = params.get("arguments") or {}
        if isinstance(arguments, dict) and (found := argument_problem(arguments)):
            # As the prompt itself refuses a bad argument: a JSON-RPC error, not an HTTP one.
            return _error(200, INVALID_PARAMS, found[0], found[1], _safe_id(message))
    if found := json_problem(message, MAX_MESSAGE_DEPTH):
        return _error(400, INVALID_REQUEST, found[0], found[1], _safe_id(message))
    if found := params_problem(message.get("method"), params):
        return _error(200, INVALID_PARAMS, found[0], found[1], _safe_id(message))
    return None


# The SDK's own types for the requests whose parameters a caller writes by hand; it answers a
# mismatch with -32602 "Invalid request parameters", naming nothing.
PARAMS: dict[str, type[BaseModel]] = {
    "prompts/get": mt.GetPromptRequestParams,
    "resources/read": mt.ReadResourceRequestParams,
    "completion/complete": mt.CompleteRequestParams,
}


def params_problem(method: Any, params: Any) -> tuple[str, str] | None:
    """What the MCP SDK will refuse in a request's ``params``, as (field, reason): a prompt's
    arguments are named as a tool's are (``ticket_id``, not ``arguments.ticket_id``)."""
    model = PARAMS.get(method) if isinstance(method, str) else None
    if model is None:
        return None
    try:
        model.model_validate(params if params is not None else {})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = [str(part) for part in error["loc"]]
        if method == "prompts/get" and loc[:1] == ["arguments"] and len(loc) > 1:
            loc = loc[1:]
        reason = "required" if error["type"] == "missing" else error["msg"]
        return _joined(tuple(loc)) or "params", reason
    return None


def _safe_id(message: dict[str, Any]) -> Any:
    """The request's id, if it is one a reply can carry."""
    id = message.get("id")
    readable = isinstance(id, str | int) and not isinstance(id, bool)
    return id if readable and json_problem(id, 0) is None else None


class MessageLimits:
    """ASGI layer in front of the MCP endpoint: every POST body passes ``check_message`` (and
    ``max_bytes``) before the MCP SDK reads it.

    With ``require_auth``, requests without a verified token pass on untouched, to be refused
    with 401 by the bearer-auth layer without their body being read.
    """

    def __init__(self, app: ASGIApp, server: str, max_bytes: int, require_auth: bool) -> None:
        self.app, self.server = app, server
        self.max_bytes, self.require_auth = max_bytes, require_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or (self.require_auth and not isinstance(scope.get("user"), AuthenticatedUser))
        ):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(too_large(self.max_bytes), scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while not messages or messages[-1].get("more_body", False):
            messages.append(await receive())
            if messages[-1]["type"] != "http.request":
                break
            size += len(messages[-1].get("body", b""))
            if size > self.max_bytes:
                await self._refuse(too_large(self.max_bytes), scope, receive, send)
                return
        refusal = check_message(b"".join(m.get("body", b"") for m in messages))
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
        telemetry.MESSAGES_REFUSED.labels(self.server, str(refusal.status)).inc()
        log.info("refused a message: %s", refusal.reply.get("error") or refusal.reply["result"])
        await JSONResponse(refusal.reply, status_code=refusal.status)(scope, receive, send)
