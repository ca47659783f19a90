"""Micro-batch assembly: group texts so padding is small and a batch stays within budgets."""

from __future__ import annotations

from collections.abc import Sequence


def sub_batches(token_counts: Sequence[int], max_items: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped by length; a group's padded cost (longest x size) stays <= max_tokens.

    Sorting by length means one long text does not make a whole batch pay for its padding.
    A single text over the budget still gets a group of its own: it must be embedded.
    """
    order = sorted(range(len(token_counts)), key=lambda i: token_counts[i])
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = max(1, token_counts[index])
        widest = max(longest, length)
        if current and (len(current) >= max_items or widest * (len(current) + 1) > max_tokens):
            groups.append(current)
            current, widest = [], length
        current.append(index)
        longest = widest
    if current:
        groups.append(current)
    return groups


def conflict_free_segments(keys: Sequence[str]) -> list[list[int]]:
    """Consecutive runs of indices in which no key repeats.

    Within a run, upserts and deletes touch different objects, so they may be written in any
    order (and batched by kind); a key seen again starts a new run, so a DELETE followed by an
    UPSERT of the same chunk (or the reverse) keeps its Kafka order.
    """
    segments: list[list[int]] = []
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if not segments or key in seen:
            segments.append([])
            seen = set()
        segments[-1].append(index)
        seen.add(key)
    return segments
