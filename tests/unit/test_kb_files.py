"""Reading article files for ``supportmesh kb ingest``: what becomes an article, and what is
refused before anything is sent."""

import json
from pathlib import Path

import pytest

from clients.kb import BATCH, BATCH_BYTES, ArticleFileError, batches, read_articles


def test_markdown_and_json_files_become_articles(tmp_path: Path) -> None:
    (tmp_path / "refunds.md").write_text("# Refund policy\n\nFive to seven days.\n")
    (tmp_path / "notes.md").write_text("No title line here.\n")
    (tmp_path / "sub").mkdir()
    record = {"id": "doc_1", "title": "Cards", "content": "Freeze it.", "tags": ["cards"]}
    (tmp_path / "sub" / "doc_1.json").write_text(json.dumps(record))
    articles = {a["id"]: a for a in read_articles(tmp_path)}
    assert articles["refunds"] == {
        "id": "refunds",
        "title": "Refund policy",
        "body": "\nFive to seven days.\n",
        "tags": [],
    }
    assert articles["notes"]["title"] == "notes"
    assert articles["doc_1"] == {
        "id": "doc_1",
        "title": "Cards",
        "body": "Freeze it.",
        "tags": ["cards"],
    }


def test_two_files_with_one_id_are_refused_naming_both(tmp_path: Path) -> None:
    for folder in ("billing", "shipping"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "faq.md").write_text("# FAQ\n\nAsk us.\n")
    with pytest.raises(ArticleFileError) as refused:
        read_articles(tmp_path)
    message = str(refused.value)
    assert "billing/faq.md" in message and "shipping/faq.md" in message and "'faq'" in message


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.json", "{not json", "not JSON"),
        ("list.json", "[1, 2]", "not a JSON object"),
        ("untitled.json", json.dumps({"id": "x1", "content": "Body."}), "title"),
        ("has space.md", "# Title\n\nBody.\n", "id"),
        ("latin1.md", b"# Caf\xe9\n", "not UTF-8"),
    ],
)
def test_a_file_that_is_not_an_article_is_named(
    tmp_path: Path, name: str, text: str | bytes, expected: str
) -> None:
    (tmp_path / "fine.md").write_text("# Fine\n\nBody.\n")
    if isinstance(text, bytes):
        (tmp_path / name).write_bytes(text)
    else:
        (tmp_path / name).write_text(text)
    with pytest.raises(ArticleFileError) as refused:
        read_articles(tmp_path)
    assert str(refused.value).startswith(str(tmp_path / name)) and expected in str(refused.value)


def test_ingest_batches_stay_inside_a_server_s_message_limit() -> None:
    """A hundred articles of 200,000 characters would be 20 MB in one call, past the 16 MiB a
    server reads: batches are cut by size as well as by count."""
    big = [{"id": f"a{i}", "title": "t", "body": "é" * 200_000, "tags": []} for i in range(100)]
    small = [{"id": f"b{i}", "title": "t", "body": "x", "tags": []} for i in range(250)]
    cut = batches(big + small)
    assert [a["id"] for batch in cut for a in batch] == [a["id"] for a in big + small]
    sizes = [sum(len(json.dumps(a).encode()) for a in batch) for batch in cut]
    assert all(size <= BATCH_BYTES for size in sizes) and len(cut) > 100 // BATCH + 250 // BATCH
    assert all(len(batch) <= BATCH for batch in cut)
