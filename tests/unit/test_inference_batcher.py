"""The endpoint's micro-batcher: concurrent requests share a batch, capped, within the window."""

from __future__ import annotations

import asyncio

import pytest

from streamproc.inference.batcher import MicroBatcher


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail = fail

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("encoder broke")
        return [item.upper() for item in items]


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_result() -> None:
    async def run() -> None:
        recorder = Recorder()
        batcher = MicroBatcher(recorder, max_batch=16, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.submit(f"q{i}") for i in range(10)))
        assert results == [f"Q{i}" for i in range(10)]
        assert recorder.batches == [[f"q{i}" for i in range(10)]]
        await batcher.close()

    asyncio.run(run())


def test_a_batch_closes_at_the_cap() -> None:
    async def run() -> None:
        recorder = Recorder()
        batcher = MicroBatcher(recorder, max_batch=4, max_wait_s=10.0)
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(str(i)) for i in range(12))), 5
        )
        assert results == [str(i) for i in range(12)]
        # The 10 s window never elapsed: every batch closed at the cap.
        assert [len(b) for b in recorder.batches] == [4, 4, 4]
        assert sorted(x for b in recorder.batches for x in b) == sorted(map(str, range(12)))
        await batcher.close()

    asyncio.run(run())


def test_a_lone_request_waits_no_longer_than_the_window() -> None:
    async def run() -> None:
        recorder = Recorder()
        batcher = MicroBatcher(recorder, max_batch=64, max_wait_s=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit("only") == "ONLY"
        assert loop.time() - started < 0.5
        assert recorder.batches == [["only"]]
        await batcher.close()

    asyncio.run(run())


def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    async def run() -> None:
        recorder = Recorder(delay_s=0.1)
        batcher = MicroBatcher(recorder, max_batch=64, max_wait_s=0.0)
        first = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0.03)  # "a" is being encoded now
        rest = [asyncio.create_task(batcher.submit(x)) for x in ("b", "c")]
        assert await first == "A"
        assert [await t for t in rest] == ["B", "C"]
        assert recorder.batches == [["a"], ["b", "c"]]
        await batcher.close()

    asyncio.run(run())


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_runs() -> None:
    async def run() -> None:
        recorder = Recorder(fail=True)
        batcher = MicroBatcher(recorder, max_batch=8, max_wait_s=0.01)
        outcomes = await asyncio.gather(
            batcher.submit("x"), batcher.submit("y"), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        recorder.fail = False
        assert await batcher.submit("z") == "Z"
        await batcher.close()

    asyncio.run(run())


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0, max_wait_s=0.01)
