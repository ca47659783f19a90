"""Self-supervised retrieval queries and their scores: what a section asks, what is skipped,
and the quality gate's verdict on two collections' figures."""

from __future__ import annotations

import pytest
from weaviate.collections.classes.grpc import _MultiTargetVectorJoin, _MultiTargetVectorJoinEnum

from streamproc.backfill.quality import (
    MAX_SENTENCE_WORDS,
    Query,
    Scores,
    derive_queries,
    recall_at_k,
    reciprocal_rank,
    sample_queries,
    score,
    sentence_query,
    title_query,
)
from streamproc.backfill.recall import target_vectors
from streamproc.backfill.verification import QUALITY_CHECK, quality_check
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR
from streamproc.weaviate_schema import target_vector


def chunk(doc: str, index: int, path: tuple[str, ...], text: str, tenant: str = "t1") -> dict:
    return {
        "chunk_key": f"{tenant}/{doc}/p1/{index}",
        "tenant": tenant,
        "doc_id": doc,
        "chunk_index": index,
        "heading_path": list(path),
        "text": text,
    }


@pytest.mark.parametrize(
    ("title", "query"),
    [
        ("11.3. Multicolumn Indexes", "Multicolumn Indexes"),
        ("7\\. Simple statements", "Simple statements"),
        ("Chapter 11. Indexes", "Indexes"),
        ("Appendix A. PostgreSQL Error Codes", "PostgreSQL Error Codes"),
        ("F.1. amcheck", "amcheck"),
        ("I. Tutorial", "Tutorial"),
        ("Routine Vacuuming ¶", "Routine Vacuuming"),
        # Words that only look like numbering stay.
        ("A Simple Example", "A Simple Example"),
        ("2024 Roadmap", "2024 Roadmap"),
        # Too few letters to ask with.
        ("A.1", None),
        ("5", None),
        ("C#", None),
        ("12.1. Foo", None),
    ],
)
def test_a_title_asks_with_its_words_not_its_numbering(title: str, query: str | None) -> None:
    assert title_query(("Doc", title)) == query


def test_a_document_without_headings_asks_no_title() -> None:
    assert title_query(()) is None


def test_the_first_sentence_asks_and_a_long_one_is_cut() -> None:
    assert sentence_query("  An index speeds up lookups. It costs writes.") == (
        "An index speeds up lookups."
    )
    long = " ".join(f"w{i}" for i in range(100)) + "."
    assert sentence_query(long) == " ".join(f"w{i}" for i in range(MAX_SENTENCE_WORDS))
    assert sentence_query("See below. Then a longer sentence follows here.") is None
    assert sentence_query("   ") is None


def test_each_section_asks_its_title_and_first_sentence_for_all_its_chunks() -> None:
    chunks = [
        # Out of order: the section's first chunk is the one with the lowest index.
        chunk("d1", 2, ("Guide", "11.3. Multicolumn Indexes"), "Later text of the section here."),
        chunk("d1", 1, ("Guide", "11.3. Multicolumn Indexes"), "An index can cover columns. More."),
        chunk("d1", 0, ("Guide",), "This guide explains the indexes we have."),
    ]
    queries = {(q.kind, q.heading_path): q for q in derive_queries(chunks)}
    section = ("Guide", "11.3. Multicolumn Indexes")
    assert queries[("title", section)].text == "Multicolumn Indexes"
    assert queries[("sentence", section)].text == "An index can cover columns."
    assert queries[("title", section)].relevant == {"t1/d1/p1/1", "t1/d1/p1/2"}
    assert queries[("title", ("Guide",))].relevant == {"t1/d1/p1/0"}
    assert queries[("sentence", ("Guide",))].text == "This guide explains the indexes we have."
    assert len(queries) == 4


def test_a_query_that_several_sections_ask_names_none_of_them() -> None:
    chunks = [
        chunk("create-table", 0, ("CREATE TABLE", "Description"), "CREATE TABLE will create one."),
        chunk("drop-table", 0, ("DROP TABLE", "Description"), "DROP TABLE removes tables here."),
        chunk("a", 0, ("Page A",), "Copyright 2026 the authors of this."),
        chunk("b", 0, ("Page B",), "copyright 2026  the authors of this."),
        # Another tenant's sections are not competitors: a query is searched in its tenant.
        chunk("c", 0, ("Page C", "Description"), "Text of the other tenant here.", tenant="t2"),
    ]
    texts = {(q.tenant, q.kind, q.text) for q in derive_queries(chunks)}
    assert ("t1", "title", "Description") not in texts
    assert ("t1", "sentence", "Copyright 2026 the authors of this.") not in texts
    assert ("t1", "sentence", "CREATE TABLE will create one.") in texts
    assert ("t1", "title", "Page A") in texts
    assert ("t2", "title", "Description") in texts


def test_a_chunk_without_tenant_or_index_opens_its_section_by_input_order() -> None:
    chunks = [
        {
            "chunk_key": "k2",
            "doc_id": "d",
            "heading_path": ["Install"],
            "text": "Run the installer now.",
        },
        {
            "chunk_key": "k1",
            "doc_id": "d",
            "heading_path": ["Install"],
            "text": "Then reboot the box.",
        },
    ]
    queries = {q.kind: q for q in derive_queries(chunks)}
    assert queries["sentence"].text == "Run the installer now."
    assert queries["sentence"].tenant == "" and queries["title"].relevant == {"k1", "k2"}


def test_a_section_whose_first_chunk_opens_with_too_short_a_sentence_asks_its_title_only() -> None:
    chunks = [
        chunk("d", 0, ("Install",), "Run it. Then the installer asks questions."),
        chunk("d", 1, ("Install",), "A later chunk with a long first sentence."),
    ]
    assert [q.kind for q in derive_queries(chunks)] == ["title"]


def test_sampling_is_fixed_by_the_seed_whatever_the_input_order() -> None:
    chunks = [
        chunk(f"d{i}", 0, (f"Section number {i}",), f"Text number {i} is here.") for i in range(50)
    ]
    queries = derive_queries(chunks)
    first = sample_queries(queries, 10, seed=7)
    assert sample_queries(list(reversed(queries)), 10, seed=7) == first
    assert sample_queries(queries, 10, seed=8) != first
    assert len(set(first)) == 10
    assert sample_queries(queries, 1000, seed=7) == sample_queries(queries, 100, seed=7)
    assert len(sample_queries(queries, 1000, seed=7)) == len(queries) == 100
    assert sample_queries(queries, 0, seed=7) == []


def test_recall_is_capped_by_what_k_hits_can_hold() -> None:
    assert recall_at_k(["a", "x", "b"], {"a", "b"}, k=10) == 1.0
    assert recall_at_k(["a", "x", "b"], {"a", "b"}, k=2) == 0.5
    many = {f"r{i}" for i in range(30)}
    assert recall_at_k([f"r{i}" for i in range(10)], many, k=10) == 1.0
    assert recall_at_k(["x"] * 3, {"a"}, k=10) == 0.0
    assert recall_at_k(["a"], set(), k=10) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(["a"], {"a"}, k=0)


def test_reciprocal_rank_is_that_of_the_first_relevant_hit() -> None:
    assert reciprocal_rank(["x", "b", "a"], {"a", "b"}) == 0.5
    assert reciprocal_rank(["a"], {"a"}) == 1.0
    assert reciprocal_rank(["x", "y"], {"a"}) == 0.0


def test_scores_are_the_means_over_the_queries() -> None:
    q1 = Query("one", "title", "t", "d", ("One",), frozenset({"a", "b"}))
    q2 = Query("two", "sentence", "t", "d", ("Two",), frozenset({"c"}))
    scores = score([(q1, ["a", "x"]), (q2, ["x", "y", "c"])], k=2)
    assert scores.queries == 2 and scores.k == 2
    assert scores.recall == pytest.approx((0.5 + 0.0) / 2)
    assert scores.mrr == pytest.approx((1.0 + 1 / 3) / 2)
    assert score([], k=10).recall == 0.0


def test_the_gate_passes_a_drop_within_the_setting_and_names_both_figures() -> None:
    candidate = Scores(queries=40, k=10, recall=0.83, mrr=0.8)
    check = quality_check(candidate, "C_old_v1", Scores(40, 10, 0.85, 0.9), max_drop=0.02)
    assert check.ok and check.name == QUALITY_CHECK
    assert "recall@10 0.830 (MRR 0.800) against 0.850 (MRR 0.900) for the serving C_old_v1" in (
        check.detail
    )
    assert "40 queries" in check.detail and "backfill.max_recall_drop 0.02" in check.detail
    assert quality_check(candidate, "C_old_v1", Scores(40, 10, 0.7, 0.7), max_drop=0.0).ok
    # The printed figures decide: 0.8504 and 0.8296 print as 0.850 and 0.830.
    close = quality_check(
        Scores(40, 10, 0.8296, 0.8), "C_old_v1", Scores(40, 10, 0.8504, 0.9), max_drop=0.02
    )
    assert close.ok, close.detail


def test_the_gate_fails_a_larger_drop_and_says_how_to_force() -> None:
    check = quality_check(
        Scores(40, 10, 0.80, 0.8), "C_old_v1", Scores(40, 10, 0.85, 0.9), max_drop=0.02
    )
    assert not check.ok
    assert "a drop of 0.050, more than backfill.max_recall_drop 0.02" in check.detail
    assert "--force" in check.detail


def test_the_gate_has_nothing_to_compare_without_another_serving_collection_or_queries() -> None:
    alone = quality_check(Scores(40, 10, 0.5, 0.5), None, None, max_drop=0.02)
    assert alone.ok and "recall@10 0.500" in alone.detail and "no other collection" in alone.detail
    empty = quality_check(Scores(0, 10, 0.0, 0.0), "C_old_v1", None, max_drop=0.02)
    assert empty.ok and "no query" in empty.detail


def test_retrieval_averages_content_and_heading_where_a_collection_has_both() -> None:
    assert target_vectors({CONTENT_VECTOR, HEADING_VECTOR}) == [CONTENT_VECTOR, HEADING_VECTOR]
    assert target_vectors({CONTENT_VECTOR}) == [CONTENT_VECTOR]
    both = target_vector([CONTENT_VECTOR, HEADING_VECTOR])
    assert isinstance(both, _MultiTargetVectorJoin)
    assert both.combination == _MultiTargetVectorJoinEnum.AVERAGE
    assert both.target_vectors == [CONTENT_VECTOR, HEADING_VECTOR]
    assert target_vector([CONTENT_VECTOR]) == CONTENT_VECTOR
