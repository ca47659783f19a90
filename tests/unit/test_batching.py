from __future__ import annotations

from streamproc.pipeline.batching import EncodePace, conflict_free_segments, sorted_groups


def test_a_repeated_key_starts_a_new_segment_so_kafka_order_holds() -> None:
    # DELETE a/0, a/1 then UPSERT a/0, a/1 (a document deleted and re-sent in one batch).
    keys = ["a/0", "a/1", "b/0", "a/0", "a/1", "c/0", "a/0"]
    assert conflict_free_segments(keys) == [[0, 1, 2], [3, 4, 5], [6]]


def test_distinct_keys_are_one_segment() -> None:
    assert conflict_free_segments(["x", "y", "z"]) == [[0, 1, 2]]
    assert conflict_free_segments([]) == []


def test_groups_sort_by_length_and_respect_both_budgets() -> None:
    counts = [10, 200, 12, 180, 11, 500]
    groups = list(sorted_groups(counts, max_items=2, max_tokens=lambda: 400))
    assert sorted(i for g in groups for i in g) == list(range(len(counts)))
    for group in groups:
        assert len(group) <= 2
        lengths = [counts[i] for i in group]
        assert lengths == sorted(lengths)
        # A text over the budget alone is still embedded, in a group of its own.
        assert max(lengths) * len(group) <= 400 or len(group) == 1


def test_groups_follow_a_budget_that_changes_between_groups() -> None:
    budgets = iter([30, 1000])
    groups = list(sorted_groups([10] * 6, max_items=64, max_tokens=lambda: next(budgets)))
    assert [len(g) for g in groups] == [3, 3]


def test_pace_sizes_calls_to_the_budget_from_measured_speed() -> None:
    pace = EncodePace()
    assert pace.max_tokens(0.1) == EncodePace.FIRST_TOKENS
    pace.observe(padded_tokens=1000, seconds=0.5)  # a slow device: 2000 tokens a second
    assert pace.max_tokens(0.1) == 200
    assert pace.max_tokens(0.5) == 1000
    for _ in range(20):
        pace.observe(padded_tokens=1000, seconds=0.01)  # then a fast one
    assert 9000 < pace.max_tokens(0.1) <= 10000
