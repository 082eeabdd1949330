"""The three ways a notification leaves: SMTP, a signed webhook, or an ``.eml`` file.

``send`` picks one from settings: mail through ``smtp_url`` if set, else a JSON POST to
``webhook_url`` if set, else a file in ``notifications_dir`` (default ``<data_dir>/outbox``).
Every send either returns (delivered: the mail server said 250, the receiver answered 2xx, the
file is in place) or raises ``DeliveryFailed``, which is worth retrying.

What makes a repeat harmless to receivers: the mail's ``Message-ID`` is ``<event-id@supportmesh>``
(the same on every attempt), a webhook carries ``SupportMesh-Event-Id`` and the body's ``id``,
and the file is named by the event id and replaced atomically, never written twice.

Webhook bodies are signed as Stripe signs them: ``SupportMesh-Signature: t=<unix time>,
v1=<hex HMAC-SHA256 of "<t>.<raw body>">`` with ``webhook_secret``, or a random key kept in
``<data_dir>/webhook-secret`` (made on first use, mode 0600). Receivers check it with
``verify_signature``.
"""

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import smtplib
import ssl
import time
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from schemas.events import Event
from schemas.notifications import Notification
from servers.runtime.settings import Settings

Channel = Literal["smtp", "webhook", "file"]
SECRET_FILE = "webhook-secret"  # noqa: S105 (a file name, not a secret)
SIGNATURE_HEADER = "SupportMesh-Signature"
EVENT_ID_HEADER = "SupportMesh-Event-Id"
TIMEOUT_SECONDS = 30.0  # one connection, one reply: well under the task visibility timeout
SMTP_PORTS = {"smtp": 25, "smtps": 465}


class DeliveryFailed(Exception):
    """The channel did not take the notification (refused, unreachable, timed out)."""


def channel_for(settings: Settings) -> Channel:
    """The channel ``settings`` choose: smtp, else webhook, else file."""
    if settings.smtp_url:
        return "smtp"
    return "webhook" if settings.webhook_url else "file"


def send(settings: Settings, event: Event, notification: Notification) -> str | None:
    """Deliver ``notification`` through the channel of ``settings``; returns a note worth
    keeping (recipients a mail server refused while taking the others), or None.

    Raises ``DeliveryFailed`` when it was not delivered.
    """
    try:
        match channel_for(settings):
            case "smtp":
                assert settings.smtp_url
                return send_mail(settings.smtp_url, email_message(settings, event, notification))
            case "webhook":
                assert settings.webhook_url
                post_webhook(settings.webhook_url, webhook_secret(settings), event, notification)
                return None
            case "file":
                folder = settings.notifications_dir or Path(settings.data_dir) / "outbox"
                write_eml(folder, event.id, email_message(settings, event, notification))
                return None
    except (smtplib.SMTPException, OSError, httpx.HTTPError) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc


def message_id(event_id: uuid.UUID) -> str:
    """The mail's Message-ID, the same on every attempt: ``<event-id@supportmesh>``."""
    return f"<{event_id}@supportmesh>"


def email_message(settings: Settings, event: Event, notification: Notification) -> EmailMessage:
    """The mail for SMTP and for ``.eml`` files (plain text, UTF-8)."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(notification.to)
    message["Subject"] = notification.title
    message["Date"] = format_datetime(event.time)
    message["Message-ID"] = message_id(event.id)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders stay quiet
    message["X-SupportMesh-Kind"] = notification.kind.value
    message["X-SupportMesh-Subject"] = event.subject
    message.set_content(notification.body)
    return message


def send_mail(smtp_url: str, message: EmailMessage) -> str | None:
    """Hand ``message`` to the server at ``smtp_url`` (smtp://: STARTTLS when offered;
    smtps://: TLS from the start; user:password in the URL logs in). Returns the refused
    recipients, if the server took the others."""
    url = urlsplit(smtp_url)
    if url.scheme not in SMTP_PORTS or not url.hostname:
        raise DeliveryFailed(f"smtp_url must be smtp://host[:port] or smtps://…, not {url.scheme}")
    port = url.port or SMTP_PORTS[url.scheme]
    context = ssl.create_default_context()
    client = (
        smtplib.SMTP_SSL(url.hostname, port, timeout=TIMEOUT_SECONDS, context=context)
        if url.scheme == "smtps"
        else smtplib.SMTP(url.hostname, port, timeout=TIMEOUT_SECONDS)
    )
    with client:
        client.ehlo()
        if url.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls(context=context)
            client.ehlo()
        if url.username:
            client.login(unquote(url.username), unquote(url.password or ""))
        sender = parseaddr(str(message["From"]))[1]
        refused = client.send_message(message, from_addr=sender)
    return f"refused by the mail server: {', '.join(sorted(refused))}" if refused else None


def webhook_body(event: Event, notification: Notification) -> dict[str, Any]:
    """What a webhook receives: the event's envelope with the notification's fields."""
    return {
        "id": str(event.id),
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "time": event.time.isoformat(),
        **notification.model_dump(mode="json", exclude_none=True),
    }


def post_webhook(url: str, secret: str, event: Event, notification: Notification) -> None:
    """POST the notification to ``url``, signed with ``secret``; anything but 2xx fails."""
    body = json.dumps(webhook_body(event, notification), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        EVENT_ID_HEADER: str(event.id),
    }
    with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as http:
        answer = http.post(url, content=body, headers=headers)
    if not answer.is_success:
        raise DeliveryFailed(f"the webhook answered {answer.status_code}")


def sign(secret: str, body: bytes, at: int) -> str:
    """The ``SupportMesh-Signature`` header of ``body`` sent at unix time ``at``."""
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_seconds: float, now: float | None = None
) -> bool:
    """Whether ``header`` (a ``SupportMesh-Signature``) signs ``body`` with ``secret`` and was
    made within ``tolerance_seconds`` of ``now`` (default: the clock). For receivers: pass the
    raw body as received, before parsing it."""
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        at = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - at) > tolerance_seconds:
        return False
    expected = sign(secret, body, at).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def webhook_secret(settings: Settings) -> str:
    """The key webhook bodies are signed with: from settings, or the data directory's (made on
    first use, mode 0600)."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        # Written whole under another name, then linked into place: a process starting at the
        # same moment finds either no file or the finished one, and the first link wins.
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{SECRET_FILE}.{uuid.uuid4().hex}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):
                os.link(partial, path)
        finally:
            partial.unlink()
    return path.read_text().strip()


def write_eml(folder: Path, event_id: uuid.UUID, message: EmailMessage) -> Path:
    """Write ``message`` to ``folder/<event-id>.eml`` atomically (a temporary file renamed
    over it): a reader never sees half a mail, and a retry replaces the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{event_id}.eml"
    partial = folder / f".{event_id}.{uuid.uuid4().hex}.tmp"
    try:
        with partial.open("wb") as out:
            out.write(bytes(message))
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
