"""Least recently used heading vectors, shared by the embedder's lanes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np


class HeadingCache:
    """Every method is synchronous and none assumes an entry is still there: lanes share one
    cache across their awaits, and another lane may evict what a lane saw before its await."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def hits(self, headings: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `headings`, now marked as recently used."""
        found: dict[str, np.ndarray] = {}
        for heading in headings:
            vector = self._vectors.get(heading)
            if vector is not None:
                self._vectors.move_to_end(heading)
                found[heading] = vector
        return found

    def add(self, vectors: Mapping[str, np.ndarray]) -> None:
        for heading, vector in vectors.items():
            self._vectors[heading] = vector
            self._vectors.move_to_end(heading)
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)

    def __len__(self) -> int:
        return len(self._vectors)
