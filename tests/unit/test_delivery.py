"""Confirmed sends, transient retries, failpoints and the restart policy, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError

from streamproc import failpoints
from streamproc.delivery import Outbox, is_transient
from streamproc.errors import PermanentError, TransientError
from streamproc.worker.runner import RestartPolicy


def test_transient_errors_are_the_retriable_ones() -> None:
    assert is_transient(KafkaTimeoutError())
    assert is_transient(NotLeaderForPartitionError())
    assert is_transient(TransientError("down"))
    assert not is_transient(MessageSizeTooLargeError())
    assert not is_transient(PermanentError("bad"))
    assert not is_transient(ValueError("bug"))


class FlakyBroker:
    """Stands in for the producer: each send's future fails `failures` times, then succeeds."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.delivered: list[tuple[Any, ...]] = []

    async def send(self, *args: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            future.set_exception(self.error)
        else:
            self.delivered.append(args)
            future.set_result(None)
        return future


def test_a_send_that_fails_transiently_is_sent_again_until_confirmed() -> None:
    broker = FlakyBroker(2, KafkaTimeoutError())

    async def run() -> None:
        outbox = Outbox(broker.send)
        await outbox.send("t", b"k", b"v", None)
        await outbox.confirm()

    asyncio.run(run())
    assert broker.delivered == [("t", b"k", b"v", None)]


def test_a_send_that_fails_for_good_raises() -> None:
    broker = FlakyBroker(1, MessageSizeTooLargeError())

    async def run() -> None:
        outbox = Outbox(broker.send)
        await outbox.send("t", b"k", b"v", None)
        await outbox.confirm()

    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(run())


def test_failpoints_fail_on_the_named_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        failpoints, "_POINTS", failpoints._parse("a=2@RuntimeError,b=2*KafkaTimeoutError")
    )
    failpoints.fail_point("a")
    with pytest.raises(RuntimeError):
        failpoints.fail_point("a")
    failpoints.fail_point("a")
    for _ in range(2):
        with pytest.raises(KafkaTimeoutError):
            failpoints.fail_point("b")
    failpoints.fail_point("b")
    failpoints.fail_point("unset")


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(max_crashes=5, window_s=300, first_backoff_s=0.5, max_backoff_s=4)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
