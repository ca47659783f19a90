"""Finishing work that runs behind the stream, one piece after another in arrival order."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class InOrder:
    """Runs each added piece of work in the background once the one added before it has ended,
    so a caller can go on with its next item meanwhile. `add` waits while `limit` pieces are
    unfinished (backpressure) and raises the error of a piece that failed; the pieces after a
    failed one do not run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: deque[asyncio.Task[None]] = deque()

    async def add(self, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Returns the piece's task, done once it ran, failed or was cancelled."""
        self._reap()
        while len(self._tasks) >= self.limit:
            await asyncio.wait({self._tasks[0]})
            self._reap()
        previous = self._tasks[-1] if self._tasks else None
        task = asyncio.ensure_future(self._after(previous, work))
        task.add_done_callback(_log_failure)
        self._tasks.append(task)
        return task

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def _reap(self) -> None:
        while self._tasks and self._tasks[0].done():
            task = self._tasks.popleft()
            if not task.cancelled() and (error := task.exception()) is not None:
                self.cancel()
                raise error

    @staticmethod
    async def _after(
        previous: asyncio.Task[None] | None, work: Callable[[], Awaitable[None]]
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
            if previous.cancelled() or previous.exception() is not None:
                raise asyncio.CancelledError
        await work()


def _log_failure(task: asyncio.Task[None]) -> None:
    # Logged when it happens; the caller sees it only at its next `add`.
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background work failed", exc_info=error)
