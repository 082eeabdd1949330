"""Optional data sets, fetched on demand: ``supportmesh data fetch tau2``.

A data set is a manifest in ``clients/datasets/``: the repository and the commit it is pinned
to, and every file with its sha256. Fetching downloads each file from the repository at that
commit (or a mirror with the same paths), checks its hash, and only then puts it in place; a
file already there with the right hash is not downloaded again. A file whose bytes do not
match is not kept, and the fetch fails naming it.

The layout is ``DEST/tau2/retail/db.json`` and so on: the layout of the shared data the tests
and benchmarks look for (``SUPPORTMESH_SHARED_DATA``, ``../shared/data``, or this fetched copy
in ``DATA_DIR/datasets``).
"""

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

MANIFESTS = Path(__file__).parent / "datasets"
CHUNK = 1 << 16
DATA_SET_HELP = (
    "needs tau2-bench's retail store and banking knowledge base (MIT), which are not part of "
    "this repository: run `supportmesh data fetch tau2`, or set SUPPORTMESH_SHARED_DATA to "
    "the folder holding tau2/retail and tau2/banking_knowledge"
)


def find_data_set(name: str, data_dir: Path, *elsewhere: Path) -> Path | None:
    """The folder holding data set ``name`` (``FOLDER/name/...``), if this machine has it:
    ``$SUPPORTMESH_SHARED_DATA``, then ``elsewhere``, then the copy ``supportmesh data fetch``
    put in ``data_dir/datasets``."""
    candidates = [Path(p) for p in [os.environ.get("SUPPORTMESH_SHARED_DATA", "")] if p]
    candidates += [*elsewhere, data_dir / "datasets"]
    return next((c for c in candidates if (c / name).is_dir()), None)


class Manifest(BaseModel):
    name: str
    description: str
    repository: str
    commit: str
    base_url: str
    files: dict[str, str]  # local path -> sha256
    sources: dict[str, str]  # local path, or a prefix of one ending in "/" -> its path upstream

    def source(self, path: str) -> str:
        """Where ``path`` lies in the repository."""
        if path in self.sources:
            return self.sources[path]
        prefix = max((p for p in self.sources if p.endswith("/") and path.startswith(p)), key=len)
        return self.sources[prefix] + path.removeprefix(prefix)


def manifests() -> list[str]:
    return sorted(p.stem for p in MANIFESTS.glob("*.json"))


def load_manifest(name: str) -> Manifest:
    """The manifest of data set ``name``; ``KeyError`` if there is none."""
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        raise KeyError(name)
    return Manifest.model_validate_json(path.read_text())


class FetchFailed(Exception):
    """Some files could not be fetched or did not match their hash; ``problems`` says which."""

    def __init__(self, problems: list[str]) -> None:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        super().__init__(f"{len(problems)} file(s) not fetched: {shown}")
        self.problems = problems


@dataclass
class Fetched:
    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch(
    manifest: Manifest,
    dest: Path,
    mirror: str | None = None,
    progress: Callable[[str], None] | None = None,
    concurrency: int = 16,
) -> Fetched:
    """Every file of ``manifest`` in ``dest``, checked; raises ``FetchFailed`` (after trying
    them all) if any could not be fetched or did not match. ``mirror``: a base URL serving
    the repository's files at the manifest's commit under the same paths."""
    base = (mirror or manifest.base_url).rstrip("/") + "/"
    done, problems = Fetched(), []
    limit = asyncio.Semaphore(concurrency)

    async def one(http: httpx.AsyncClient, path: str, expected: str) -> None:
        target = dest / path
        async with limit:
            if target.is_file() and await asyncio.to_thread(sha256_of, target) == expected:
                done.present.append(path)
            else:
                url = base + quote(manifest.source(path), safe="/")
                try:
                    await _download(http, url, target, expected)
                    done.downloaded.append(path)
                except (httpx.HTTPError, OSError, _Mismatch) as exc:
                    problems.append(f"{path}: {exc}")
        if progress:
            progress(path)

    async with httpx.AsyncClient(timeout=60, follow_redirects=True) as http:
        await asyncio.gather(*(one(http, p, h) for p, h in manifest.files.items()))
    if problems:
        raise FetchFailed(sorted(problems))
    return done


class _Mismatch(Exception):
    pass


async def _download(http: httpx.AsyncClient, url: str, target: Path, expected: str) -> None:
    """``url`` to ``target`` if its bytes hash to ``expected``; nothing is left otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(httpx.TransportError),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=5),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                digest = hashlib.sha256()
                async with http.stream("GET", url) as answer:
                    answer.raise_for_status()
                    with partial.open("wb") as out:
                        async for chunk in answer.aiter_bytes(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
        if (got := digest.hexdigest()) != expected:
            raise _Mismatch(f"sha256 {got[:12]}…, expected {expected[:12]}…")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
