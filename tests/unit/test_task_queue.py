"""Environments that share one Redis keep their background tasks apart."""

from pathlib import Path

from servers.runtime.settings import Settings
from servers.runtime.tasks import task_queue

DB = "postgresql://postgres@127.0.0.1:5432/support"


def test_servers_and_workers_of_one_environment_share_each_server_s_queue(tmp_path: Path) -> None:
    server = Settings(data_dir=tmp_path, postgres_url=DB, redis_url="redis://127.0.0.1:6379/0")
    worker = Settings(data_dir=tmp_path, postgres_url=DB.replace("postgres@", "postgres:pw@"))
    assert task_queue(server, "knowledge") == task_queue(worker, "knowledge")
    assert task_queue(server, "knowledge") != task_queue(server, "memory")


def test_another_database_or_qdrant_store_gets_another_queue(tmp_path: Path) -> None:
    here = Settings(data_dir=tmp_path / "a", postgres_url=DB)
    other_store = Settings(data_dir=tmp_path / "b", postgres_url=DB)
    other_db = Settings(data_dir=tmp_path / "a", postgres_url=DB.replace("/support", "/staging"))
    remote = Settings(data_dir=tmp_path / "a", postgres_url=DB, qdrant_url="http://qdrant:6333")
    queues = {task_queue(s, "knowledge") for s in (here, other_store, other_db, remote)}
    assert len(queues) == 4


def test_one_place_spelled_two_ways_is_one_queue(tmp_path: Path) -> None:
    server = Settings(
        data_dir=tmp_path / "a",
        postgres_url="postgresql://postgres@127.0.0.1/support",
        qdrant_url="http://qdrant:6333/",
    )
    worker = Settings(
        data_dir=tmp_path / "b",
        postgres_url="postgresql://app:pw@127.0.0.1:5432/support?sslmode=disable",
        qdrant_url="http://qdrant:6333",
    )
    assert task_queue(server, "knowledge") == task_queue(worker, "knowledge")
