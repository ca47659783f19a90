"""Stall detection: how old the oldest unfinished work of a worker is, and whether that makes
it unhealthy (a Kubernetes liveness probe restarts it then).

Two kinds of work count: events taken from Kafka and not yet acked, and partitions whose
position stays behind their high watermark without moving (nothing taken at all). Work that
is being retried (a service is down) is not a stall: restarting would not help, and the retry
metric and logs say what it waits for.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from faust.types import TP

# A retry this recent means the oldest work is waiting on a service, not stuck.
RETRY_RECENT_S = 30.0

_last_retry = -float("inf")


def note_retry() -> None:
    global _last_retry
    _last_retry = time.monotonic()


def retrying() -> bool:
    return time.monotonic() - _last_retry < RETRY_RECENT_S


class InFlight:
    """Work taken from Kafka and not yet acked (or given up): what a rebalance waits for, and
    the age of its oldest piece."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self._ids = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> int:
        token = next(self._ids)
        self._started[token] = time.monotonic()
        self._idle.clear()
        return token

    def leave(self, token: int) -> None:
        self._started.pop(token, None)
        if not self._started:
            self._idle.set()

    async def drained(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def oldest_age(self, now: float) -> float:
        return now - min(self._started.values(), default=now)


@dataclass
class _Position:
    offset: int
    since: float


class Stalls:
    """Partitions behind their high watermark whose position does not move."""

    def __init__(self) -> None:
        self._positions: dict[TP, _Position] = {}

    def observe(self, tp: TP, position: int, highwater: int, now: float) -> None:
        seen = self._positions.get(tp)
        if position >= highwater:
            self._positions.pop(tp, None)
        elif seen is None or seen.offset != position:
            self._positions[tp] = _Position(position, now)

    def forget_others(self, assigned: Iterable[TP]) -> None:
        keep = set(assigned)
        for tp in [tp for tp in self._positions if tp not in keep]:
            del self._positions[tp]

    def oldest_age(self, now: float) -> float:
        return now - min((p.since for p in self._positions.values()), default=now)


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    oldest_work_s: float
    retrying: bool


class Health:
    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.inflight = InFlight()
        self.stalls = Stalls()

    def oldest_work_s(self) -> float:
        now = time.monotonic()
        return max(self.inflight.oldest_age(now), self.stalls.oldest_age(now))

    def verdict(self) -> Verdict:
        age = self.oldest_work_s()
        busy_retrying = retrying()
        return Verdict(age <= self.threshold_s or busy_retrying, age, busy_retrying)
