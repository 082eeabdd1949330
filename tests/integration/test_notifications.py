"""Notification delivery end to end: Kafka's notifications.outbound, the delivery log in
PostgreSQL, Celery workers (in this process, and ``supportmesh worker`` in a subprocess), and
real receivers: an SMTP server (aiosmtpd), an HTTP webhook receiver (uvicorn), a folder.

Each test reads the topic as a consumer group of its own from the topic's end, so it hands
over only the events it publishes. The in-process worker takes the notifications queue of the
session's environment; the test that kills a worker uses another Redis database, so only the
subprocess workers see its task.
"""

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from celery import Celery
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.events import Event, Topic
from schemas.notifications import NOTIFICATION_REQUESTED, Notification
from servers.notifications import store
from servers.notifications.delivery import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature
from servers.notifications.handover import MIGRATIONS, Handover, notifications_running
from servers.notifications.tasks import DELIVER_TASK, SCHEMA
from servers.runtime.backends import free_port
from servers.runtime.database import Pool, Row, migrate_and_open
from servers.runtime.events import add_to_outbox, new_producer, schema_with_outbox
from servers.runtime.settings import Settings
from servers.runtime.tasks import task_queue, worker_in_thread
from tests.conftest import SUPPORTMESH, serving_in_thread, stopped, supportmesh_env

pytestmark = pytest.mark.timeout(150)

T = TypeVar("T")


def notification(subject: str = "ticket/42", **data: Any) -> Event:
    """A ``notification.requested`` event as the ticketing server writes one."""
    return Event(
        type=NOTIFICATION_REQUESTED,
        source="ticketing",
        subject=subject,
        data={
            "kind": "ticket.reply",
            "to": ["ada@example.com", "ops@example.com"],
            "title": "Re: where is my order?",
            "body": "Hi Ada,\n\nyour order #W9000004 shipped today.\n",
            "ticket_id": 42,
        }
        | data,
    )


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 30) -> T:
    """The first true answer of ``check``, asked every 50 ms for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (answer := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return answer


async def delivery(pool: Pool, event_id: uuid.UUID) -> Row | None:
    async with pool.connection() as conn:
        return await (
            await conn.execute(
                "SELECT * FROM notifications.deliveries WHERE event_id = %s", [event_id]
            )
        ).fetchone()


async def finished(pool: Pool, event_id: uuid.UUID, timeout: float = 30) -> Row:
    """The delivery's row once it is sent or dead."""

    async def done() -> Row | None:
        row = await delivery(pool, event_id)
        return row if row and row["status"] != "pending" else None

    return await eventually(done, timeout)


async def through_outbox(pool: Pool, *events: Event) -> None:
    """Publish as the servers do: committed to an outbox, relayed to Kafka."""
    async with pool.connection() as conn, conn.transaction():
        await add_to_outbox(conn, [(Topic.NOTIFICATIONS_OUTBOUND, e) for e in events])


async def straight_to_kafka(settings: Settings, *events: Event) -> None:
    """Publish in this order (one subject: one partition), as a relay does, duplicates too."""
    producer = new_producer(settings)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                Topic.NOTIFICATIONS_OUTBOUND.value,
                event.model_dump_json().encode(),
                key=event.subject.encode(),
            )
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
async def outbox(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pool]:
    """A schema with an outbox and its relay, standing in for a server that notifies."""
    no_migrations = tmp_path_factory.mktemp("notifier-migrations")
    async with schema_with_outbox(settings, "notifier", no_migrations) as pool:
        yield pool


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[None]:
    """This process's Celery worker, on the notifications queue, for the whole module."""
    with worker_in_thread(settings, "notifications"):
        yield


@contextlib.asynccontextmanager
async def delivering(settings: Settings, **changes: Any) -> AsyncIterator[Handover]:
    """Notifications handed over and delivered with ``changes`` to ``settings`` (a consumer
    group of this block's own, from the topic's end) until the block exits."""
    ours = settings.model_copy(
        update={"notifications_group": f"notifications-test-{uuid.uuid4().hex[:8]}"} | changes
    )
    with worker_in_thread(ours, "notifications"):  # the module's worker, with these settings
        async with notifications_running(ours, offset_reset="latest") as handover:
            await asyncio.wait_for(handover.ready.wait(), 60)
            yield handover


class Inbox:
    """An aiosmtpd handler keeping the mail it accepted. With ``hold`` set, the next DATA gets
    no reply until the client goes away (aiosmtpd then cancels the handler: nothing accepted)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.hold = False
        self.holding = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold:
            self.hold = False
            self.holding.set()
            await asyncio.Event().wait()
        assert isinstance(envelope.content, bytes)
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[str, Inbox]]:
    """A real SMTP server on a free loopback port: its smtp:// URL and its inbox."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{port}", inbox
    finally:
        controller.stop()


Received = list[tuple[int, dict[str, str], bytes]]  # (status answered, headers, body)


@contextlib.contextmanager
def webhook_receiver(answers: list[int], event: Event) -> Iterator[tuple[str, Received, list[int]]]:
    """An HTTP receiver answering the POSTs of ``event`` with ``answers`` in turn, then the last
    of them for good; yields its URL, what it received, and the answers (change them to change
    it). Other notifications (the session's servers write some on the same topic) get 200 and
    are not kept."""
    received: Received = []

    async def receive(request: Request) -> Response:
        if request.headers.get(EVENT_ID_HEADER) != str(event.id):
            return Response(status_code=200)
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        received.append((status, dict(request.headers), await request.body()))
        return Response(status_code=status)

    app = Starlette(routes=[Route("/hooks/notifications", receive, methods=["POST"])])
    with serving_in_thread(app) as base_url:
        yield f"{base_url}/hooks/notifications", received, answers


def message_ids(inbox: Inbox, *events: Event) -> list[str]:
    """The Message-IDs of the mail ``events`` became, in the order received (the session's
    servers notify on the same topic: their mail is left out)."""
    ours = {f"<{event.id}@supportmesh>" for event in events}
    return [str(m["Message-ID"]) for m in inbox.messages if str(m["Message-ID"]) in ours]


async def test_a_notification_is_mailed_once_even_when_kafka_delivers_it_twice(
    settings: Settings, outbox: Pool, worker: None
) -> None:
    event, later = notification(), notification(title="Your ticket was updated")
    with smtp_server() as (url, inbox):
        async with delivering(settings, smtp_url=url) as handover:
            await through_outbox(outbox, event)
            row = await finished(handover.pool, event.id)
            assert (row["status"], row["channel"], row["attempts"]) == ("sent", "smtp", 1)
            # A relay that died between publishing and marking its row publishes it again.
            await straight_to_kafka(settings, event, later)
            await finished(handover.pool, later.id)

    assert message_ids(inbox, event, later) == [
        f"<{event.id}@supportmesh>",
        f"<{later.id}@supportmesh>",
    ]
    [mail] = [m for m in inbox.messages if m["Message-ID"] == f"<{event.id}@supportmesh>"]
    assert mail["To"] == "ada@example.com, ops@example.com"
    assert mail["Subject"] == "Re: where is my order?"
    assert "shipped today" in mail.get_content()


def other_redis_db(url: str) -> str:
    """The same Redis, another database: tasks there stay away from this process's worker."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db - 1 if db > 0 else 1}"))


@contextlib.contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``supportmesh worker --only notifications`` until the block exits."""
    argv = [SUPPORTMESH, "worker", "--only", "notifications", "--concurrency", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    with stopped(proc):
        yield proc


async def test_a_worker_killed_while_sending_leaves_one_mail_after_redelivery(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.postgres_url and settings.redis_url
    apart = settings.model_copy(update={"redis_url": other_redis_db(settings.redis_url)})
    event = notification(subject="ticket/43")
    pool = await migrate_and_open(settings.postgres_url, SCHEMA, MIGRATIONS)
    sender = Celery("test-sender", broker=apart.redis_url, set_as_current=False)
    try:
        with smtp_server() as (url, inbox):
            env = supportmesh_env(apart) | {
                "SUPPORTMESH_SMTP_URL": url,
                "SUPPORTMESH_TASK_VISIBILITY_TIMEOUT_SECONDS": "3",
            }
            attempts = await store.record(pool, event, Notification.model_validate(event.data))
            assert attempts == 0
            sender.send_task(
                DELIVER_TASK,
                args=[str(event.id), attempts],
                queue=task_queue(apart, "notifications"),
            )
            inbox.hold = True
            with worker_process(env, tmp_path / "first.log") as first:
                while not inbox.holding.is_set():
                    assert first.poll() is None, (tmp_path / "first.log").read_text()
                    await asyncio.sleep(0.05)
                children = psutil.Process(first.pid).children(recursive=True)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            psutil.wait_procs(children, timeout=10)
            assert not [c for c in children if c.is_running()], "a pool process outlived it"
            row = await delivery(pool, event.id)
            assert row and (row["status"], row["attempts"], inbox.messages) == ("pending", 0, [])

            with worker_process(env, tmp_path / "second.log"):
                row = await finished(pool, event.id, timeout=60)
        assert (row["status"], row["attempts"]) == ("sent", 1)
        assert message_ids(inbox, event) == [f"<{event.id}@supportmesh>"]
    finally:
        sender.close()
        await pool.close()


async def test_a_webhook_that_fails_three_times_gets_it_once_signed(
    settings: Settings, outbox: Pool, worker: None
) -> None:
    secret = secrets.token_urlsafe(32)
    event = notification(subject="approval/apr_1", kind="approval.waiting", approval_id="apr_1")
    with webhook_receiver([500, 500, 500, 200], event) as (url, received, _):
        async with delivering(
            settings, webhook_url=url, webhook_secret=SecretStr(secret), notify_retry_seconds=0.1
        ) as handover:
            await through_outbox(outbox, event)
            row = await finished(handover.pool, event.id)

    assert (row["status"], row["channel"], row["attempts"]) == ("sent", "webhook", 4)
    assert [status for status, _, _ in received] == [500, 500, 500, 200]
    for _, headers, body in received:
        signature = headers[SIGNATURE_HEADER.lower()]
        assert verify_signature(secret, signature, body, 300)
        assert not verify_signature("another secret", signature, body, 300)
        assert not verify_signature(secret, signature, body + b" ", 300)
        assert not verify_signature(secret, signature, body, 300, now=time.time() + 3600)
        assert headers[EVENT_ID_HEADER.lower()] == str(event.id)
    _, _, body = received[-1]
    assert json.loads(body) == {
        "id": str(event.id),
        "type": "notification.requested",
        "source": "ticketing",
        "subject": "approval/apr_1",
        "time": event.time.isoformat(),
        "kind": "approval.waiting",
        "to": ["ada@example.com", "ops@example.com"],
        "title": "Re: where is my order?",
        "body": "Hi Ada,\n\nyour order #W9000004 shipped today.\n",
        "ticket_id": 42,
        "approval_id": "apr_1",
    }


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``supportmesh notifications ARGS`` on these backends."""
    return subprocess.run(
        [SUPPORTMESH, "notifications", *args],
        env=supportmesh_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_webhook_that_keeps_failing_is_dead_lettered_and_retried_from_the_cli(
    settings: Settings, outbox: Pool, worker: None
) -> None:
    event = notification(subject="ticket/44", kind="ticket.sla_breached")
    with webhook_receiver([503], event) as (url, received, answers):
        async with delivering(
            settings, webhook_url=url, notify_max_attempts=3, notify_retry_seconds=0.1
        ) as handover:
            await through_outbox(outbox, event)
            row = await finished(handover.pool, event.id)
            assert (row["status"], row["attempts"]) == ("dead", 3)
            assert row["last_error"] == "the webhook answered 503"
            assert len(received) == 3

            listed = cli(settings, "dead")
            assert listed.returncode == 0, listed.stderr
            [line] = [ln for ln in listed.stdout.splitlines() if str(event.id) in ln]
            assert "ticket.sla_breached" in line and "attempts=3" in line
            assert "ada@example.com,ops@example.com" in line and "answered 503" in line

            answers[:] = [200]  # the receiver is fixed
            retried = cli(settings, "retry", str(event.id))
            assert (retried.returncode, retried.stdout.split()) == (0, [str(event.id)])
            row = await finished(handover.pool, event.id)

    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert [status for status, _, _ in received] == [503, 503, 503, 200]


async def test_with_no_mail_server_or_webhook_a_notification_is_one_eml_file(
    settings: Settings, worker: None, tmp_path: Path
) -> None:
    folder = tmp_path / "outbox"
    event, later = notification(subject="ticket/45"), notification(subject="ticket/45")
    async with delivering(
        settings, smtp_url=None, webhook_url=None, notifications_dir=folder
    ) as handover:
        await straight_to_kafka(settings, event, event, later)
        await finished(handover.pool, later.id)
        row = await finished(handover.pool, event.id)

    assert (row["status"], row["channel"], row["attempts"]) == ("sent", "file", 1)
    ours = {f"{event.id}.eml", f"{later.id}.eml"}
    assert sorted(p.name for p in folder.iterdir() if p.name in ours) == sorted(ours)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    mail = message_from_bytes((folder / f"{event.id}.eml").read_bytes(), policy=policy.default)
    assert mail["Message-ID"] == f"<{event.id}@supportmesh>"
    assert mail["To"] == "ada@example.com, ops@example.com"
    assert mail["Subject"] == "Re: where is my order?"


async def test_a_malformed_notification_is_dead_lettered_and_the_next_still_goes_out(
    settings: Settings, worker: None, tmp_path: Path
) -> None:
    bad = notification(subject="ticket/46", to=[], title="two\nlines")
    good = notification(subject="ticket/46")
    async with delivering(settings, notifications_dir=tmp_path) as handover:
        await straight_to_kafka(settings, bad, good)
        assert (await finished(handover.pool, good.id))["status"] == "sent"
        row = await finished(handover.pool, bad.id)

    assert (row["status"], row["attempts"], row["kind"]) == ("dead", 0, "ticket.reply")
    assert row["last_error"].startswith("not a notification:")
    assert "to" in row["last_error"] and "title" in row["last_error"]
    assert [p.name for p in tmp_path.iterdir()] == [f"{good.id}.eml"]
