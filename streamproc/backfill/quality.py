"""Retrieval quality measured on queries the chunks themselves give: no labelled data needed.

A *section* is the chunks of one document that share a heading path. Each section yields up
to two queries, both with the section's chunk keys as the relevant set:

- ``title``: the section's own title (the last heading-path element), without its leading
  numbering ("11.3. Multicolumn Indexes" asks "Multicolumn Indexes") or a trailing permalink
  mark;
- ``sentence``: the first sentence of the section's first chunk, cut to `MAX_SENTENCE_WORDS`
  words so that it stays well within any registered model's window.

A query is skipped when it cannot name its section:

- a title with fewer than `MIN_TITLE_LETTERS` letters ("C", "A.1", "5") or a sentence with
  fewer than `MIN_SENTENCE_WORDS` words (a code line, "See below."): too little to ask with;
- a query text (compared case- and space-insensitively) that more than one section yields:
  the generic titles that every reference page repeats ("Description", "Examples", "See
  Also") and boilerplate first sentences. No answer could tell those sections apart, so
  they would measure the queries, not the collection.

Recall@k is capped by the size of the relevant set (what BEIR calls R_cap): the share of
the k best hits that are relevant, out of the most that k hits can hold,
``|top_k ∩ relevant| / min(k, |relevant|)``. A section of 30 chunks would otherwise score
at most 1/3 at k=10 even when retrieval is perfect. The reciprocal rank is ``1/rank`` of the
first relevant hit, 0 when none is in the ranking given.

Everything here is pure: the callers embed, search and log (counts and figures only; a
query's text comes from a document and is never logged).
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

QueryKind = Literal["title", "sentence"]

MIN_TITLE_LETTERS = 4
MIN_SENTENCE_WORDS = 4
MAX_SENTENCE_WORDS = 48

# "11.3.", "7\\." (escaped by a Markdown converter), "Chapter 11.", "Appendix A.", "F.1.",
# "IV.": numbering needs its dot, so "A Simple Example" and "2024 Roadmap" keep their words.
_NUMBERING = re.compile(
    r"^\s*(?:(?i:chapter|appendix|part|section)\s+)?"
    r"(?:\d+|[A-Z]|[IVXLC]+)(?:\\?\.\d+)*\\?\.(?=\s)\s*"
)
_PERMALINK = re.compile(r"[\s¶]+$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class Query:
    text: str
    kind: QueryKind
    tenant: str
    doc_id: str
    heading_path: tuple[str, ...]
    relevant: frozenset[str]  # chunk keys of the section


@dataclass(frozen=True)
class Scores:
    queries: int
    k: int
    recall: float  # mean capped recall@k
    mrr: float  # mean reciprocal rank


def title_query(heading_path: Sequence[str]) -> str | None:
    """The query a section's title gives, or None when it has too few letters to ask with."""
    if not heading_path:
        return None
    title = _PERMALINK.sub("", _NUMBERING.sub("", heading_path[-1].strip(), count=1)).strip()
    return title if len(_LETTER.findall(title)) >= MIN_TITLE_LETTERS else None


def sentence_query(text: str) -> str | None:
    """The first sentence of `text`, cut to `MAX_SENTENCE_WORDS` words; None when too short."""
    stripped = text.strip()
    if not stripped:
        return None
    words = _SENTENCE_END.split(stripped, maxsplit=1)[0].split()
    if len(words) < MIN_SENTENCE_WORDS:
        return None
    return " ".join(words[:MAX_SENTENCE_WORDS])


def derive_queries(chunks: Iterable[Mapping[str, Any]]) -> list[Query]:
    """Title and first-sentence queries of every section of `chunks`, in a stable order.

    A chunk is a mapping with ``chunk_key``, ``doc_id``, ``heading_path`` and ``text``, and
    optionally ``tenant`` (sections never span tenants) and ``chunk_index`` (which chunk opens
    a section; input order otherwise), as a ChunkRecord is.
    """
    sections: dict[tuple[str, str, tuple[str, ...]], list[tuple[int, int, Mapping[str, Any]]]] = {}
    for position, chunk in enumerate(chunks):
        section = (
            str(chunk.get("tenant", "")),
            str(chunk["doc_id"]),
            tuple(chunk.get("heading_path") or ()),
        )
        order = int(chunk.get("chunk_index", position))
        sections.setdefault(section, []).append((order, position, chunk))
    candidates: list[Query] = []
    for (tenant, doc_id, path), members in sorted(sections.items()):
        relevant = frozenset(str(c["chunk_key"]) for _, _, c in members)
        first = min(members, key=lambda m: (m[0], m[1]))[2]
        asks: tuple[tuple[QueryKind, str | None], ...] = (
            ("title", title_query(path)),
            ("sentence", sentence_query(str(first["text"]))),
        )
        candidates += [
            Query(text, kind, tenant, doc_id, path, relevant) for kind, text in asks if text
        ]
    uses: dict[tuple[str, str], int] = {}
    for query in candidates:
        key = (query.tenant, _normal(query.text))
        uses[key] = uses.get(key, 0) + 1
    return [q for q in candidates if uses[(q.tenant, _normal(q.text))] == 1]


def sample_queries(queries: Sequence[Query], size: int, seed: int | str) -> list[Query]:
    """`size` of `queries` (all when fewer), the same ones for the same queries and seed
    whatever order they came in."""
    ordered = sorted(queries, key=lambda q: (q.tenant, q.doc_id, q.heading_path, q.kind, q.text))
    return random.Random(seed).sample(ordered, min(max(size, 0), len(ordered)))


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Relevant keys among the first `k` of `ranked`, out of ``min(k, len(relevant))``."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not relevant:
        return 0.0
    found = len(set(ranked[:k]) & set(relevant))
    return found / min(k, len(relevant))


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """``1/rank`` of the first relevant key in `ranked`, 0 when none is."""
    wanted = set(relevant)
    return next((1.0 / rank for rank, key in enumerate(ranked, 1) if key in wanted), 0.0)


def score(results: Iterable[tuple[Query, Sequence[str]]], k: int = 10) -> Scores:
    """Mean recall@k and MRR of (query, ranked chunk keys) pairs; zeros when there are none.

    The reciprocal rank looks at the whole ranking given, so pass `k` hits for MRR@k."""
    recalls: list[float] = []
    ranks: list[float] = []
    for query, ranked in results:
        recalls.append(recall_at_k(ranked, query.relevant, k))
        ranks.append(reciprocal_rank(ranked, query.relevant))
    n = len(recalls)
    return Scores(n, k, sum(recalls) / n if n else 0.0, sum(ranks) / n if n else 0.0)


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())
