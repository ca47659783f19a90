"""The embedder's Weaviate calls: on a thread of their own (the client blocks), traced, and
retried in place with backoff while Weaviate is unavailable or refuses for now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID

from opentelemetry.trace import Span, Status, StatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from streamproc.delivery import backoff
from streamproc.errors import PermanentError, TransientError
from streamproc.health import note_retry
from streamproc.telemetry import retries_counter, tracer
from streamproc.weaviate_schema import ChunkObject, WriteResult
from streamproc.weaviate_store import WeaviateStore

log = logging.getLogger(__name__)


class WeaviateIO:
    def __init__(self, store: WeaviateStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="weaviate")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def held(
        self, collection: str, tenant: str, uuids: Sequence[UUID]
    ) -> dict[UUID, tuple[Any, str]]:
        """(ingested_at, text_sha256) of those of `uuids` the collection holds."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=backoff(),
            before_sleep=_note_retry,
        ):
            with attempt:
                found: dict[UUID, tuple[Any, str]] = await self._run(
                    self.store.held, collection, tenant, list(uuids)
                )
        return found

    async def upsert(self, collection: str, objects: Sequence[ChunkObject]) -> WriteResult:
        by_uuid = {o.uuid: o for o in objects}
        with _weaviate_span("batch upsert", collection, len(objects)) as span:
            outcome = await self._settled(
                lambda pending: self.store.upsert(collection, [by_uuid[u] for u in pending]),
                list(by_uuid),
            )
            if outcome.failed:
                span.set_status(Status(StatusCode.ERROR, "objects rejected"))
        return outcome

    async def delete(self, collection: str, tenant: str, uuids: Sequence[UUID]) -> WriteResult:
        with _weaviate_span("delete", collection, len(uuids)) as span:
            outcome = await self._settled(
                lambda pending: self.store.delete(collection, tenant, pending), list(uuids)
            )
            if outcome.failed:
                span.set_status(Status(StatusCode.ERROR, "deletes rejected"))
        return outcome

    async def _settled(
        self, send: Callable[[list[UUID]], WriteResult], uuids: list[UUID]
    ) -> WriteResult:
        """Send until every object is done or rejected for good. An outage or a rejection for
        now (read-only shard, timeout) is retried with backoff, without end: the stream waits
        instead of dropping. A request Weaviate refuses as a whole fails each of its objects."""
        written: list[UUID] = []
        failed: dict[UUID, str] = {}
        pending = uuids
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=backoff(),
            before_sleep=_note_retry,
        ):
            with attempt:
                try:
                    outcome = await self._run(send, pending)
                except PermanentError as exc:
                    outcome = WriteResult([], dict.fromkeys(pending, str(exc)))
                written += outcome.written
                failed.update(outcome.failed)
                pending = [u for u in pending if u in outcome.retry]
                if pending:
                    raise TransientError(
                        f"weaviate rejected {len(pending)} object(s) for now: "
                        f"{outcome.retry[pending[0]]}"
                    )
        return WriteResult(written, failed)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


def _weaviate_span(operation: str, collection: str, objects: int) -> AbstractContextManager[Span]:
    return tracer.start_as_current_span(
        f"weaviate {operation}",
        attributes={
            "db.system.name": "weaviate",
            "db.operation.name": operation,
            "db.collection.name": collection,
            "streamproc.objects": objects,
        },
    )


def _note_retry(state: RetryCallState) -> None:
    retries_counter.add(1)
    note_retry()
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "weaviate write not done yet, retrying",
        extra={"attempt": state.attempt_number, "error": str(error)},
    )
