"""``supportmesh kb ingest`` and ``kb search`` on a fresh data directory, embedded backends."""

import os
import subprocess
from pathlib import Path

from tests.conftest import SUPPORTMESH


def supportmesh(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTMESH_")}
    env["SUPPORTMESH_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [SUPPORTMESH, *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_ingest_a_folder_with_progress_then_search_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text(
        "# Refund policy\n\n## Timing\nRefunds reach the card within 5 to 7 business days.\n"
    )
    (docs / "passwords.md").write_text(
        "# Resetting a password\n\n## Steps\nUse the 'Forgot password' link on the sign-in page.\n"
    )
    done = supportmesh(tmp_path, "kb", "ingest", str(docs), "--source", "handbook")
    assert done.returncode == 0, done.stderr
    assert "indexed" in done.stderr and "2/2" in done.stderr  # the progress bar
    assert "2 articles: 2 indexed, 0 unchanged, 0 failed" in done.stderr

    again = supportmesh(tmp_path, "kb", "ingest", str(docs), "--source", "handbook")
    assert "2 articles: 0 indexed, 2 unchanged, 0 failed" in again.stderr, again.stderr
    moved = supportmesh(tmp_path, "kb", "ingest", str(docs), "--source", "policies")
    assert "2 articles: 2 indexed, 0 unchanged, 0 failed" in moved.stderr, moved.stderr

    found = supportmesh(tmp_path, "kb", "search", "when will I get my money back", "--k", "1")
    assert found.returncode == 0, found.stderr
    assert "refunds" in found.stdout and "Refund policy > Timing" in found.stdout


def test_worker_apart_needs_a_qdrant_server(tmp_path: Path) -> None:
    done = supportmesh(tmp_path, "worker")
    assert done.returncode == 2
    assert "Qdrant is in local mode" in done.stderr


def test_ingest_refuses_a_folder_with_two_articles_of_one_id_before_sending(
    tmp_path: Path,
) -> None:
    for folder in ("billing", "shipping"):
        (tmp_path / "docs" / folder).mkdir(parents=True)
        (tmp_path / "docs" / folder / "faq.md").write_text("# FAQ\n\nAsk us.\n")
    refused = supportmesh(tmp_path, "kb", "ingest", str(tmp_path / "docs"))
    assert refused.returncode == 2
    # typer boxes and wraps the message at the terminal's width
    message = "".join(c for c in refused.stderr if c not in "│ \n")
    assert "billing/faq.mdand" in message and "shipping/faq.mdarebotharticle'faq'" in message
    assert not (tmp_path / "data").exists()  # no engine was started, nothing was stored
