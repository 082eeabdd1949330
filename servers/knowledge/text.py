"""Article text: chunks by heading, and the lexical (BM25-style) sparse vectors of a text.

Chunks follow the article's markdown headings, so a hit can cite "Title > Section > Sub". A
section longer than ``max_words`` is cut into windows that overlap by ``overlap_words``, so a
sentence on a cut is whole in at least one chunk.

Sparse vectors carry BM25's term-frequency part: ``tf * (k1 + 1) / (tf + k1 * (1 - b + b *
len / avg_len))`` for each term of a chunk. A query's terms are weighted by how often the query
says them, saturating: ``tf * (k + 1) / (tf + k)`` with ``k = QUERY_K``, so the topic a customer
keeps coming back to outweighs a word of their story, yet no word drowns the rest. Qdrant
multiplies in the inverse document frequency itself (the collection's sparse vector has
``Modifier.IDF``), so the score of a query is BM25 over the collection as it is now, with no
corpus statistics kept here.

Terms are lower-cased words with English stop words removed and a light suffix strip, plus every
pair of adjacent words (``light_blue``, ``gold_plu``): the pairs tell apart products whose
names share words, a "Light Blue" and a "Sky Blue" account, "Gold" and "Gold Plus". Each term
maps to a stable 31-bit index.
"""

import itertools
import re
import zlib
from collections import Counter
from dataclasses import dataclass

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")  # opens a fenced code block (CommonMark)
WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)
K1, B, AVG_LEN = 1.2, 0.75, 60.0
QUERY_K = 10.0  # saturation of a query term's count; chosen on bench/kb_long_queries.jsonl


@dataclass(frozen=True)
class Chunk:
    """A piece of an article: where it sits (heading path), its text, its place in the article."""

    index: int
    headings: tuple[str, ...]
    text: str


def _sections(body: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """(heading path, lines) for each run of text under one heading."""
    path: list[tuple[int, str]] = []
    sections: list[tuple[tuple[str, ...], list[str]]] = [((), [])]
    fence: str | None = None  # the marker of the code block we are in: no headings there
    for line in body.splitlines():
        if fence is None and (match := HEADING.match(line)):
            level, title = len(match.group(1)), match.group(2).strip()
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
            sections.append((tuple(t for _, t in path), []))
            continue
        if fence is None:
            if opening := FENCE.match(line):
                fence = opening.group(1)
        elif re.fullmatch(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
            fence = None
        sections[-1][1].append(line)
    return [(headings, lines) for headings, lines in sections if "".join(lines).strip()]


def chunk_article(body: str, max_words: int = 120, overlap_words: int = 30) -> list[Chunk]:
    """The chunks of a markdown article, in reading order."""
    chunks: list[Chunk] = []
    for headings, lines in _sections(body):
        words = re.findall(r"\S+\s*", "\n".join(lines).strip())  # each word with its spacing
        start = 0
        while True:
            window = words[start : start + max_words]
            chunks.append(Chunk(len(chunks), headings, "".join(window).strip()))
            if start + max_words >= len(words):
                break
            start += max_words - overlap_words
    return chunks


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def words(text: str) -> list[str]:
    """The words of ``text`` that count for search, in order, repeats kept: lower-cased, stop
    words dropped, endings stripped."""
    found = WORD.findall(text.lower().replace("’", "'"))
    return [_stem(w.split("'")[0]) for w in found if w not in STOP_WORDS]


def terms(text: str) -> list[str]:
    """The lexical terms of ``text``: its words, then each pair of adjacent words."""
    single = words(text)
    return single + [f"{a}_{b}" for a, b in itertools.pairwise(single)]


def term_index(term: str) -> int:
    return zlib.crc32(term.encode()) & 0x7FFFFFFF


def document_sparse(text: str) -> tuple[list[int], list[float]]:
    """BM25 term-frequency weights of a chunk (Qdrant supplies the IDF)."""
    counts = Counter(term_index(t) for t in terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVG_LEN)
    indices = sorted(counts)
    return indices, [counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices]


def query_sparse(text: str) -> tuple[list[int], list[float]]:
    """Each distinct term of a query, weighted by how often the query uses it (saturating)."""
    counts = Counter(term_index(t) for t in terms(text))
    indices = sorted(counts)
    return indices, [counts[i] * (QUERY_K + 1) / (counts[i] + QUERY_K) for i in indices]
