from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from streamproc.pipeline.ordered import InOrder


def _step(
    log: list[str], name: str, gate: asyncio.Event | None = None
) -> Callable[[], Awaitable[None]]:
    async def work() -> None:
        log.append(f"{name} started")
        if gate is not None:
            await gate.wait()
        log.append(f"{name} ended")

    return work


def test_pieces_run_one_after_another_in_the_order_added() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        first_gate = asyncio.Event()
        all_done = asyncio.Event()
        ordered = InOrder(limit=4)
        await ordered.add(_step(log, "a", first_gate))
        await ordered.add(_step(log, "b"))
        await ordered.add(_step(log, "c"))

        async def last() -> None:
            all_done.set()

        await ordered.add(last)
        # The caller went on while "a" is unfinished, and nothing after it has started.
        await asyncio.sleep(0)
        assert log == ["a started"]
        first_gate.set()
        await all_done.wait()
        return log

    assert asyncio.run(scenario()) == [
        "a started",
        "a ended",
        "b started",
        "b ended",
        "c started",
        "c ended",
    ]


def test_add_waits_while_the_limit_is_unfinished() -> None:
    async def scenario() -> None:
        log: list[str] = []
        gate = asyncio.Event()
        ordered = InOrder(limit=1)
        await ordered.add(_step(log, "a", gate))
        adding = asyncio.ensure_future(ordered.add(_step(log, "b")))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not adding.done()
        gate.set()
        await adding
        assert log[:2] == ["a started", "a ended"]
        ordered.cancel()

    asyncio.run(scenario())


def test_a_failure_is_raised_by_the_next_add_and_later_pieces_do_not_run() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        gate = asyncio.Event()

        async def failing() -> None:
            await gate.wait()
            raise ValueError("encode failed")

        ordered = InOrder(limit=2)
        await ordered.add(failing)
        await ordered.add(_step(log, "after"))
        gate.set()
        with pytest.raises(ValueError, match="encode failed"):
            await ordered.add(_step(log, "next"))
        return log

    assert asyncio.run(scenario()) == []
