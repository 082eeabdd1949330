"""Text embeddings: a static model2vec model, loaded once per process, no torch at run time.

The model shipped in ``models/minilm-static-256`` was distilled from all-MiniLM-L6-v2 by
``models/distill.py``; ``SUPPORTMESH_EMBEDDING_MODEL`` names another model2vec folder.
The knowledge base (article chunks) and memory (customer memories) both embed with it.
"""

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from model2vec import StaticModel

SHIPPED_MODEL = Path(__file__).parent / "models" / "minilm-static-256"


@cache
def embedding_model(path: str | None) -> StaticModel:
    """The model2vec model at ``path`` (default: the one shipped here), loaded once."""
    return StaticModel.from_pretrained(path or str(SHIPPED_MODEL))


def embed(model: StaticModel, texts: list[str]) -> list[list[float]]:
    vectors: Any = model.encode(texts)
    return np.asarray(vectors, dtype=np.float32).tolist()  # type: ignore[no-any-return]
