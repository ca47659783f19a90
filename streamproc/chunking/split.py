"""Token-aware splitting: no chunk exceeds any target model's window, so nothing is truncated."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from streamproc.chunking.extract import Section

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")
_SEPARATOR = "\n\n"


class TokenCounter(Protocol):
    """One model's tokenizer, as the splitter needs it."""

    name: str
    limit: int  # content tokens one chunk may hold for this model (special tokens excluded)

    def count(self, texts: Sequence[str]) -> list[int]: ...

    def windows(self, text: str, size: int) -> list[str]:
        """`text` cut at token boundaries into pieces of at most `size` tokens."""
        ...


@dataclass(frozen=True)
class ChunkDraft:
    index: int
    heading_path: tuple[str, ...]
    text: str
    token_counts: dict[str, int]


@dataclass(frozen=True)
class _Unit:
    text: str
    counts: tuple[int, ...]


class Splitter:
    def __init__(self, counters: Sequence[TokenCounter], max_tokens: int, overlap_tokens: int):
        if not counters:
            raise ValueError("the splitter needs at least one model's tokenizer")
        self.counters = list(counters)
        self.budgets = tuple(min(max_tokens, c.limit) for c in self.counters)
        if min(self.budgets) <= 0:
            raise ValueError(f"chunk budgets must be positive, got {self.budgets}")
        self.overlap = max(0, min(overlap_tokens, min(self.budgets) // 2))

    def split(self, sections: Sequence[Section]) -> list[ChunkDraft]:
        drafts: list[ChunkDraft] = []
        for section in sections:
            for text in self._pack(self._units(section.blocks)):
                counts = {
                    c.name: n for c, n in zip(self.counters, self._count([text])[0], strict=True)
                }
                drafts.append(ChunkDraft(len(drafts), section.heading_path, text, counts))
        return drafts

    def _count(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        per_model = [c.count(texts) for c in self.counters]
        return [tuple(col) for col in zip(*per_model, strict=True)]

    def _fits(self, counts: tuple[int, ...]) -> bool:
        return all(n <= b for n, b in zip(counts, self.budgets, strict=True))

    def _units(self, blocks: Sequence[str]) -> list[_Unit]:
        """Blocks that fit whole; else their sentences; else token windows of a sentence."""
        units: list[_Unit] = []
        for block, counts in zip(blocks, self._count(blocks), strict=True):
            if self._fits(counts):
                units.append(_Unit(block, counts))
                continue
            sentences = [s for s in _SENTENCE_END.split(block) if s.strip()]
            for sentence, s_counts in zip(sentences, self._count(sentences), strict=True):
                if self._fits(s_counts):
                    units.append(_Unit(sentence, s_counts))
                else:
                    units.extend(self._windows(sentence))
        return units

    def _windows(self, text: str) -> list[_Unit]:
        tightest = min(range(len(self.counters)), key=lambda i: self.budgets[i])
        size = self.budgets[tightest]
        while True:
            pieces = [p for p in self.counters[tightest].windows(text, size) if p.strip()]
            counts = self._count(pieces)
            if all(self._fits(c) for c in counts):
                return [_Unit(p, c) for p, c in zip(pieces, counts, strict=True)]
            # Another model splits these pieces into more tokens: shrink until all agree.
            size = max(1, int(size * 0.8))

    def _pack(self, units: list[_Unit]) -> list[str]:
        chunks: list[str] = []
        current: list[_Unit] = []
        for unit in units:
            if current and not self._fits_together([*current, unit]):
                chunks.append(_join(current))
                current = self._overlap_tail(current)
                # The overlap must leave room for the unit, or it is dropped.
                while current and not self._fits_together([*current, unit]):
                    current.pop(0)
            current.append(unit)
        if current:
            chunks.append(_join(current))
        return chunks

    def _fits_together(self, units: list[_Unit]) -> bool:
        """Cheap sum first; then the real count, since joins can add tokens with some models."""
        summed = tuple(sum(col) for col in zip(*(u.counts for u in units), strict=True))
        return self._fits(summed) and self._fits(self._count([_join(units)])[0])

    def _overlap_tail(self, units: list[_Unit]) -> list[_Unit]:
        tail: list[_Unit] = []
        total = 0
        for unit in reversed(units[1:]):  # never carry the whole chunk over
            total += max(unit.counts)
            if total > self.overlap:
                break
            tail.insert(0, unit)
        return tail


def _join(units: list[_Unit]) -> str:
    return _SEPARATOR.join(u.text for u in units)
