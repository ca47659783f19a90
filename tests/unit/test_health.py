"""Stall detection arithmetic: in-flight work, partitions that stop moving, retries."""

from __future__ import annotations

import asyncio

from faust.types import TP

from streamproc import health
from streamproc.health import Health, InFlight, Stalls

TP0 = TP("t", 0)


def test_in_flight_age_is_that_of_the_oldest_unfinished_piece() -> None:
    inflight = InFlight()
    first = inflight.enter()
    second = inflight.enter()
    now = 1e12
    assert inflight.oldest_age(now) > 0
    inflight.leave(first)
    inflight.leave(second)
    assert inflight.oldest_age(now) == 0


def test_drained_waits_for_every_piece_or_times_out() -> None:
    async def run() -> tuple[bool, bool]:
        inflight = InFlight()
        token = inflight.enter()
        busy = await inflight.drained(0.05)
        asyncio.get_running_loop().call_later(0.05, inflight.leave, token)
        return busy, await inflight.drained(1.0)

    assert asyncio.run(run()) == (False, True)


def test_a_partition_behind_its_high_watermark_stalls_only_while_its_position_stays() -> None:
    stalls = Stalls()
    stalls.observe(TP0, 5, 10, now=100.0)
    stalls.observe(TP0, 5, 12, now=160.0)
    assert stalls.oldest_age(200.0) == 100.0
    stalls.observe(TP0, 6, 12, now=200.0)  # it moved
    assert stalls.oldest_age(200.0) == 0.0
    stalls.observe(TP0, 12, 12, now=210.0)  # caught up
    assert stalls.oldest_age(300.0) == 0.0
    stalls.observe(TP0, 3, 9, now=300.0)
    stalls.forget_others([])  # revoked
    assert stalls.oldest_age(400.0) == 0.0


def test_old_work_is_unhealthy_unless_it_is_being_retried() -> None:
    checker = Health(threshold_s=0.0)
    checker.inflight.enter()
    health._last_retry = -float("inf")
    assert not checker.verdict().healthy
    health.note_retry()
    assert checker.verdict().healthy and checker.verdict().retrying
