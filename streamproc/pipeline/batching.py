"""Micro-batch assembly: group texts so padding is small and a batch stays within budgets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence


def sorted_groups(
    token_counts: Sequence[int], max_items: int, max_tokens: Callable[[], int]
) -> Iterator[list[int]]:
    """Indices grouped by length; a group's padded cost (longest x size) stays <= max_tokens().

    Sorting by length means one long text does not make a whole batch pay for its padding.
    A single text over the budget still gets a group of its own: it must be embedded.
    The budget is asked again before each group, so a caller can resize the groups it has
    not taken yet (EncodePace).
    """
    order = sorted(range(len(token_counts)), key=lambda i: token_counts[i])
    lengths = [max(1, token_counts[i]) for i in order]
    start = 0
    while start < len(order):
        budget = max_tokens()
        end = start + 1
        while (
            end < len(order)
            and end - start < max_items
            and lengths[end] * (end - start + 1) <= budget
        ):
            end += 1
        yield order[start:end]
        start = end


class EncodePace:
    """Sizes background encode calls to take about a given time each, from the seconds per
    padded token of earlier calls: a large batch on a GPU, a few texts on a CPU. A live batch
    that arrives while one runs waits for it, so that time bounds the wait on any device."""

    # Before anything is measured: a few short texts on any device.
    FIRST_TOKENS = 512

    def __init__(self) -> None:
        self._seconds_per_token: float | None = None

    def observe(self, padded_tokens: int, seconds: float) -> None:
        rate = seconds / max(1, padded_tokens)
        previous = self._seconds_per_token
        # Smoothed: one call slowed by a neighbour on the machine does not halve the next.
        self._seconds_per_token = rate if previous is None else 0.7 * previous + 0.3 * rate

    def max_tokens(self, budget_s: float) -> int:
        if self._seconds_per_token is None:
            return self.FIRST_TOKENS
        return max(1, int(budget_s / self._seconds_per_token))


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
