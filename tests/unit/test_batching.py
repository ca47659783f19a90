from __future__ import annotations

from streamproc.pipeline.batching import conflict_free_segments, sub_batches


def test_a_repeated_key_starts_a_new_segment_so_kafka_order_holds() -> None:
    # DELETE a/0, a/1 then UPSERT a/0, a/1 (a document deleted and re-sent in one batch).
    keys = ["a/0", "a/1", "b/0", "a/0", "a/1", "c/0", "a/0"]
    assert conflict_free_segments(keys) == [[0, 1, 2], [3, 4, 5], [6]]


def test_distinct_keys_are_one_segment() -> None:
    assert conflict_free_segments(["x", "y", "z"]) == [[0, 1, 2]]
    assert conflict_free_segments([]) == []


def test_sub_batches_sort_by_length_and_respect_both_budgets() -> None:
    counts = [10, 200, 12, 180, 11, 500]
    groups = sub_batches(counts, max_items=2, max_tokens=400)
    assert sorted(i for g in groups for i in g) == list(range(len(counts)))
    for group in groups:
        assert len(group) <= 2
        lengths = [counts[i] for i in group]
        assert lengths == sorted(lengths)
        # A text over the budget alone is still embedded, in a group of its own.
        assert max(lengths) * len(group) <= 400 or len(group) == 1
