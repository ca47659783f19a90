"""Which offsets an agent was handed, per partition and consumer generation, so that a record
the consumer stepped over never has its offset committed by what comes after it.

Faust's consumer keeps its own read offset per partition and counts any jump in what it reads
as a gap to commit across. A rebalance that lands while its fetch loop waits (a broker
connection reset, a session expiry) can leave that read offset behind or ahead of the seek to
the committed offset: it then drops the records it is handed again, or counts the ones it never
handed over as done, and the next commit passes records nobody processed. Rather than trust
that bookkeeping, every agent checks what it is handed: the first offset of a partition in a
generation against the group's committed offset, and each later one against the one before.
A jump is harmless only if the broker holds no record in between (compaction, transaction
markers); the caller asks it, and ends the process before anything more is acked if it does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Jump:
    """Offsets `start` (None: the group's committed offset) up to `end` were not handed over."""

    topic: str
    partition: int
    start: int | None
    end: int


class HandedOffsets:
    def __init__(self) -> None:
        # (topic, partition) -> (generation, the next offset expected)
        self._next: dict[tuple[str, int], tuple[int | None, int]] = {}

    def hand(self, topic: str, partition: int, generation: int | None, offset: int) -> Jump | None:
        """Record that the record at `offset` was handed over in `generation`; the offsets
        before it that were not, if there may be any."""
        key = (topic, partition)
        seen = self._next.get(key)
        self._next[key] = (generation, offset + 1)
        if seen is None or seen[0] != generation:
            # A new generation starts at the committed offset (Faust seeks there on every
            # assignment), which only the broker knows.
            return Jump(topic, partition, None, offset)
        if offset > seen[1]:
            return Jump(topic, partition, seen[1], offset)
        return None
