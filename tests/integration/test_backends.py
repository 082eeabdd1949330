"""The embedded engines start, serve and stop, and never outlive whoever started them."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis import Redis

from servers.runtime.backends import start_backends
from servers.runtime.settings import Settings
from tests.conftest import SUPPORTMESH

EMBEDDED_ONLY = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}


def embedded(data_dir: Path) -> Settings:
    """Settings that start every engine here, whatever URLs the environment sets."""
    return Settings(data_dir=data_dir, postgres_url=None, redis_url=None, kafka_bootstrap=None)


def engines_under(data_dir: Path) -> list[psutil.Process]:
    """Live engine processes started for ``data_dir`` (by command line or log file)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "open_files"]):
        with_dir = str(data_dir) in " ".join(proc.info["cmdline"] or [])
        logs = any(str(data_dir) in f.path for f in proc.info["open_files"] or [])
        if not (with_dir or logs) or proc.pid == os.getpid():
            continue
        try:
            if proc.status() != "zombie":
                found.append(proc)
        except (psutil.NoSuchProcess, FileNotFoundError):  # it exited while we looked
            pass
    return found


def wait_gone(data_dir: Path, seconds: float = 20) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := engines_under(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


async def kafka_round_trip(bootstrap: str) -> bytes | None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    await producer.send_and_wait("probe", b"hello")
    await producer.stop()
    consumer = AIOKafkaConsumer(
        "probe", bootstrap_servers=bootstrap, group_id="probe", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
        value: bytes | None = record.value
        return value
    finally:
        await consumer.stop()


def test_engines_start_serve_and_stop(tmp_path: Path) -> None:
    with start_backends(embedded(tmp_path), durable=False) as ready:
        assert ready.postgres_url and ready.redis_url and ready.kafka_bootstrap
        with psycopg.connect(ready.postgres_url) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        redis = Redis.from_url(ready.redis_url)
        assert redis.set("k", "v") and redis.get("k") == b"v"
        redis.close()
        assert asyncio.run(kafka_round_trip(ready.kafka_bootstrap)) == b"hello"
        assert len(engines_under(tmp_path)) >= 3
        assert json.loads((tmp_path / "backends.json").read_text())["pid"] == os.getpid()
    assert wait_gone(tmp_path) == []
    assert not (tmp_path / "backends.json").exists()


def test_a_second_process_reuses_running_engines(tmp_path: Path) -> None:
    with start_backends(embedded(tmp_path), durable=False) as first:
        before = {p.pid for p in engines_under(tmp_path)}
        script = (
            "from servers.runtime.backends import start_backends\n"
            "from servers.runtime.settings import Settings\n"
            f"with start_backends(Settings(data_dir={str(tmp_path)!r})) as s:\n"
            "    print(s.postgres_url)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=EMBEDDED_ONLY,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert out == first.postgres_url
        assert {p.pid for p in engines_under(tmp_path)} == before


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_engines_die_with_their_parent(tmp_path: Path, sig: signal.Signals) -> None:
    """Even a parent killed with SIGKILL, which runs no clean-up, leaves no engine behind."""
    script = (
        "import sys, time\n"
        "from servers.runtime.backends import start_backends\n"
        "from servers.runtime.settings import Settings\n"
        f"with start_backends(Settings(data_dir={str(tmp_path)!r})):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=EMBEDDED_ONLY, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout and parent.stdout.readline().strip() == "ready"
    assert len(engines_under(tmp_path)) >= 3
    parent.send_signal(sig)
    parent.wait(timeout=30)
    assert wait_gone(tmp_path) == []


def test_backends_command_prints_urls_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {**EMBEDDED_ONLY, "SUPPORTMESH_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([SUPPORTMESH, "backends"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout
    printed = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
    with psycopg.connect(printed["SUPPORTMESH_POSTGRES_URL"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert wait_gone(tmp_path) == []
