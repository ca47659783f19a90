"""Who yields to whom in the embedder: live batches into the configured collections first, the
same batches into backfill targets next, backfill replays last. A lane encodes and writes only
while the lanes before it have nothing in progress, in calls sized to a time slice, so
searchable latency does not pay for a backfill beyond one slice and one write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum

# Live traffic counts as flowing for this long after a live batch ends.
LIVE_RECENT_S = 5.0


class Lane(IntEnum):
    """A lower value goes first."""

    # Live batches into the configured collections: what searches see.
    LIVE = 0
    # The same batches into backfill targets, after their configured collections are written.
    LIVE_BACKFILL = 1
    REPLAY = 2


@dataclass(frozen=True)
class Background:
    """How work behind the live lane yields: each encode call is sized to take about `slice_s`
    while live traffic flows, `idle_slice_s` while it does not (larger calls encode faster;
    the first live batch after a quiet spell waits for one of them)."""

    slice_s: float
    idle_slice_s: float


class Lanes:
    """Calls in progress per lane, and each lane's turn: set while no earlier lane has one, so
    a call waits behind at most one encode and one write of a later lane."""

    def __init__(self, background: Background) -> None:
        self.background = background
        self._busy = dict.fromkeys(Lane, 0)
        self._turn = {lane: asyncio.Event() for lane in Lane}
        self._live_seen = -LIVE_RECENT_S
        self._update()

    @contextmanager
    def working(self, lane: Lane) -> Iterator[None]:
        self._busy[lane] += 1
        self._update()
        try:
            yield
        finally:
            if lane is Lane.LIVE:
                self._live_seen = time.monotonic()
            self._busy[lane] -= 1
            self._update()

    async def turn(self, lane: Lane) -> None:
        await self._turn[lane].wait()

    def slice_s(self) -> float:
        """How long a background encode call may take now."""
        live = self._busy[Lane.LIVE] or time.monotonic() - self._live_seen < LIVE_RECENT_S
        return self.background.slice_s if live else self.background.idle_slice_s

    def _update(self) -> None:
        for lane, turn in self._turn.items():
            if any(self._busy[earlier] for earlier in Lane if earlier < lane):
                turn.clear()
            else:
                turn.set()
