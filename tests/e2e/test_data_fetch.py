"""``supportmesh data fetch``: files from a repository at a pinned commit, each checked against
its sha256, served here by a local HTTP server (this machine reaches no GitHub)."""

import hashlib
import subprocess
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clients.data import FetchFailed, Manifest, fetch, load_manifest, sha256_of
from tests.conftest import SUPPORTMESH, require_shared_data, serving_in_thread

FILES = {
    "set/LICENSE": b"MIT\n",
    "set/docs/doc_(general)_001.json": b'{"id": "a", "title": "A", "content": "x"}',
    "set/db.json": b'{"users": {}}',
}


def fixture_manifest() -> Manifest:
    return Manifest(
        name="set",
        description="a small fixture",
        repository="https://example.com/set",
        commit="0" * 40,
        base_url="http://127.0.0.1:9/",  # never used: every test gives its mirror
        files={path: hashlib.sha256(body).hexdigest() for path, body in FILES.items()},
        sources={"set/LICENSE": "LICENSE", "set/": "data/"},
    )


def repository(files: dict[str, bytes], asked: list[str]) -> Starlette:
    """Serves ``files`` (upstream path -> bytes) like raw.githubusercontent.com."""

    async def raw(request: Request) -> Response:
        path = request.path_params["path"]
        asked.append(path)
        return Response(files[path]) if path in files else Response(status_code=404)

    return Starlette(routes=[Route("/{path:path}", raw)])


def upstream(manifest: Manifest, body_of: dict[str, bytes]) -> dict[str, bytes]:
    return {manifest.source(path): body for path, body in body_of.items()}


async def test_files_are_fetched_checked_and_not_fetched_again(tmp_path: Path) -> None:
    manifest, asked = fixture_manifest(), list[str]()
    with serving_in_thread(repository(upstream(manifest, FILES), asked)) as mirror:
        first = await fetch(manifest, tmp_path, mirror)
        assert sorted(first.downloaded) == sorted(FILES) and first.present == []
        for path, body in FILES.items():
            assert (tmp_path / path).read_bytes() == body
        assert "data/docs/doc_(general)_001.json" in asked  # paths as the repository has them
        asked.clear()
        again = await fetch(manifest, tmp_path, mirror)
        assert asked == [] and sorted(again.present) == sorted(FILES)


async def test_a_file_that_does_not_match_its_hash_is_not_kept(tmp_path: Path) -> None:
    manifest, asked = fixture_manifest(), list[str]()
    tampered = FILES | {"set/db.json": b'{"users": {"mallory": {}}}'}
    with (
        serving_in_thread(repository(upstream(manifest, tampered), asked)) as mirror,
        pytest.raises(FetchFailed) as failed,
    ):
        await fetch(manifest, tmp_path, mirror)
    assert failed.value.problems[0].startswith("set/db.json: sha256 ")
    assert not (tmp_path / "set" / "db.json").exists()
    assert (tmp_path / "set" / "LICENSE").read_bytes() == b"MIT\n"  # the others are kept
    assert not list(tmp_path.rglob("*.partial"))


def test_fetch_tau2_from_a_mirror_gives_the_layout_the_tests_look_for(tmp_path: Path) -> None:
    shared = require_shared_data()
    manifest, asked = load_manifest("tau2"), list[str]()
    files = upstream(manifest, {p: (shared / p).read_bytes() for p in manifest.files})
    with serving_in_thread(repository(files, asked)) as mirror:
        done = subprocess.run(
            [SUPPORTMESH, "data", "fetch", "tau2", "--mirror", mirror, "--dest", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert "702 files downloaded" in done.stdout and manifest.commit in done.stdout
    for path in ("tau2/retail/db.json", "tau2/retail/policy.md", "tau2/LICENSE"):
        assert sha256_of(tmp_path / path) == sha256_of(shared / path)
    assert len(list((tmp_path / "tau2/banking_knowledge/documents").glob("*.json"))) == 698


def test_an_unknown_data_set_is_refused_naming_the_ones_there_are() -> None:
    done = subprocess.run(
        [SUPPORTMESH, "data", "fetch", "tau3"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "choose from tau2" in done.stderr
