"""Qdrant: a server at ``SUPPORTMESH_QDRANT_URL``, or else local mode under the data directory.

Local mode keeps a folder that one process may open at a time, so each process has one client
per location, shared by every server and task in it, and calls go through ``lock`` (local mode
is not made for concurrent use; a real Qdrant server does not need it, and it costs nothing
there).
"""

import atexit
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qdrant_client import QdrantClient, models

from servers.runtime.errors import Unavailable
from servers.runtime.settings import Settings


@dataclass
class Vectors:
    client: QdrantClient
    local: bool
    lock: threading.Lock = field(default_factory=threading.Lock)


_open: dict[str, Vectors] = {}
_opening = threading.Lock()


@atexit.register
def _close_every_client() -> None:
    """Release local stores while the interpreter still works: left to garbage collection at
    shutdown, a local client's close fails with an ImportError printed on stderr."""
    with _opening:
        for vectors in _open.values():
            vectors.client.close()
        _open.clear()


def vectors_location(settings: Settings) -> str:
    """The Qdrant server's URL, or the local store's folder."""
    return settings.qdrant_url or str((settings.data_dir / "qdrant").resolve())


def open_vectors(settings: Settings) -> Vectors:
    """This process's Qdrant client for ``settings`` (opened on first use)."""
    location = vectors_location(settings)
    with _opening:
        if location not in _open:
            if settings.qdrant_url:
                client = QdrantClient(url=settings.qdrant_url, timeout=10)
            else:
                Path(location).mkdir(parents=True, exist_ok=True)
                try:
                    client = QdrantClient(path=location)
                except RuntimeError as exc:  # another process holds the folder
                    raise Unavailable(
                        None,
                        f"Qdrant's local store {location} is open in another process (a running "
                        "`supportmesh up` or server); use that one, or set SUPPORTMESH_QDRANT_URL",
                    ) from exc
            _open[location] = Vectors(client=client, local=not settings.qdrant_url)
        return _open[location]


def ensure_collection(
    vectors: Vectors,
    name: str,
    keyword_fields: Sequence[str],
    vectors_config: models.VectorParams | dict[str, models.VectorParams],
    sparse_vectors_config: dict[str, models.SparseVectorParams] | None = None,
) -> None:
    """Create collection ``name`` unless it exists, with keyword indexes on ``keyword_fields``
    (on a Qdrant server; local mode scans payloads and has no indexes)."""
    with vectors.lock:
        client = vectors.client
        if client.collection_exists(name):
            return
        client.create_collection(
            name, vectors_config=vectors_config, sparse_vectors_config=sparse_vectors_config
        )
        if not vectors.local:
            for key in keyword_fields:
                client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)
