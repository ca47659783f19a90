"""The delivery contract's mechanics: Kafka sends confirmed (and sent again while they fail
transiently) before an offset may be acked, and crash-only for every error nobody planned for."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiokafka.errors import KafkaError, KafkaTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter
from tenacity.wait import wait_base

from streamproc.errors import TransientError
from streamproc.failpoints import fail_point
from streamproc.health import note_retry

log = logging.getLogger(__name__)

# The exit status of a worker that stopped itself on an unexpected error (EX_SOFTWARE).
CRASH_EXIT_CODE = 70


def crash(where: str, error: BaseException) -> NoReturn:
    """End the process now, before Faust can ack or commit anything more.

    Faust restarts a crashed agent in the same process, which re-enables acks and acks the
    events the crashed batch held; its commit also steps over gaps while a partition has no
    committed offset. Exiting at once leaves every unconfirmed offset uncommitted, so a
    restart delivers it again. Only the error's type and where it was raised are logged: its
    message may quote document text."""
    frames = traceback.extract_tb(error.__traceback__)
    log.critical(
        "unexpected error, exiting so that nothing more is acked",
        extra={
            "where": where,
            "exc_type": type(error).__name__,
            "stack": [f"{f.filename}:{f.lineno} in {f.name}" for f in frames],
        },
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


def guarded(where: str, work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """`work` that crashes the process on anything but cancellation."""

    async def run() -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            crash(where, exc)

    return run


def is_transient(error: BaseException) -> bool:
    """Kafka and service errors worth retrying in place: a broker restart, a leader move, a
    timeout."""
    if isinstance(error, TransientError | TimeoutError | ConnectionError | KafkaTimeoutError):
        return True
    return isinstance(error, KafkaError) and error.retriable


def _note(what: str) -> Callable[[RetryCallState], None]:
    def note(state: RetryCallState) -> None:
        note_retry()
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "retrying",
            extra={
                "what": what,
                "attempt": state.attempt_number,
                "exc_type": type(error).__name__ if error else None,
            },
        )

    return note


def backoff() -> wait_base:
    """The wait between tries of every retry in place: from 0.2 s, doubling, with up to 1 s of
    jitter, never over 5 s, so that work resumes within seconds of a service's return even
    after a long outage; one try every few seconds costs a down service nothing."""
    return wait_exponential_jitter(multiplier=0.2, max=5)


async def retry_transient(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """`call` again with backoff for as long as it fails transiently; anything else raises."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=backoff(),
        before_sleep=_note(what),
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: AsyncRetrying without a stop never gives up")


Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None], Awaitable[Any]]


class Outbox:
    """The Kafka sends one unit of work makes before its offsets may be acked. `send` queues
    without waiting for the broker; `confirm` waits for every one and sends again what failed
    transiently (a duplicate is harmless: consumers are at least once and keyed)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[tuple[asyncio.Future[Any], tuple[Any, ...]]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        args = (topic, key, value, headers)

        async def attempt() -> asyncio.Future[Any]:
            fail_point("kafka.send")
            return await self._send(*args)

        future = await retry_transient(f"send to {topic}", attempt)
        self._pending.append((future, args))

    async def confirm(self) -> None:
        pending, self._pending = self._pending, []
        for future, args in pending:
            try:
                await future
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await retry_transient(f"send to {args[0]}", lambda a=args: self._send_now(a))

    async def _send_now(self, args: tuple[Any, ...]) -> None:
        await (await self._send(*args))
