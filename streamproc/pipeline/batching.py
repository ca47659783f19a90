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
