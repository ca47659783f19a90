"""A micro-batch of embed requests in, confirmed Weaviate writes and embed-done records out.

Encoding runs on its own thread (torch releases the GIL), Weaviate writes on another, so the
event loop keeps Kafka heartbeats going. Within one batch, sub-batch k+1 is encoded while
sub-batch k is written; the batch's offsets are acked only after every write is confirmed.

Work comes in three lanes (`Lane`): live batches into the configured collections, live batches
into backfill targets, and backfill replays. A lane encodes and writes only while the lanes
before it have nothing in progress, in calls sized to a time slice, so searchable latency
does not pay for a backfill beyond one slice and one write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, TypeVar
from uuid import UUID

import numpy as np
from opentelemetry.trace import Span, Status, StatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from weaviate.exceptions import WeaviateBaseError

from streamproc.errors import TransientError
from streamproc.models import EmbeddingModel
from streamproc.naming import object_uuid
from streamproc.pipeline.batching import EncodePace, conflict_free_segments, sorted_groups
from streamproc.settings import EmbedderSettings
from streamproc.telemetry import retries_counter, tracer
from streamproc.weaviate_store import CONTENT_VECTOR, HEADING_VECTOR, ChunkObject, WeaviateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# Object-level rejections are retried this often before the request goes to the DLQ.
OBJECT_ATTEMPTS = 3
# Heading vectors kept per target collection (a few MB at 384 dimensions).
HEADING_CACHE_SIZE = 4096
# Live traffic counts as flowing for this long after a live batch ends.
LIVE_RECENT_S = 5.0


@dataclass(frozen=True)
class Target:
    model: EmbeddingModel
    collection: str


class Lane(IntEnum):
    """Who yields to whom: a lower value goes first."""

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


@dataclass
class BatchResult:
    done: list[dict[str, Any]] = field(default_factory=list)
    # Request index -> reason, for requests that go to the DLQ.
    failed: dict[int, str] = field(default_factory=dict)
    encode_seconds: float = 0.0
    write_seconds: float = 0.0


def heading_text(path: Sequence[str]) -> str:
    return " > ".join(path)


class Embedder:
    def __init__(
        self,
        targets: Sequence[Target],
        store: WeaviateStore,
        settings: EmbedderSettings,
        background: Background,
    ) -> None:
        self.targets = list(targets)
        self.store = store
        self.settings = settings
        self.background = background
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self._io_pool = ThreadPoolExecutor(1, thread_name_prefix="weaviate")
        self._heading_cache: dict[str, OrderedDict[str, np.ndarray]] = {}
        self._paces: dict[str, EncodePace] = {}
        # Calls in progress per lane; a lane's encodes and writes start only while the lanes
        # before it have none, so a call waits behind at most one encode and one write of a
        # later lane.
        self._busy = dict.fromkeys(Lane, 0)
        self._turn = {lane: asyncio.Event() for lane in Lane}
        self._update_turns()
        self._live_seen = -LIVE_RECENT_S

    def close(self) -> None:
        self._encode_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)

    async def handle(
        self,
        requests: Sequence[dict[str, Any]],
        targets: Sequence[Target] | None = None,
        *,
        lane: Lane = Lane.LIVE,
    ) -> BatchResult:
        """Write `requests` to `targets` (default: the configured ones), one target after the
        other.

        Behind the live lane, the call yields to earlier lanes: each encode call is sized to
        take a slice of time and starts only while they have nothing in progress, and at most
        one write is queued, starting under the same rule."""
        self._enter(lane)
        try:
            result = BatchResult()
            segments = conflict_free_segments([r["chunk_key"] for r in requests])
            for target in self.targets if targets is None else targets:
                for segment in segments:
                    upserts = [i for i in segment if requests[i]["op"] == "UPSERT"]
                    deletes = [i for i in segment if requests[i]["op"] == "DELETE"]
                    if lane is Lane.LIVE:
                        await self._upsert(target, requests, upserts, result)
                    else:
                        await self._upsert_background(target, requests, upserts, result, lane)
                    await self._delete(target, requests, deletes, result)
            return result
        finally:
            self._leave(lane)

    def _enter(self, lane: Lane) -> None:
        self._busy[lane] += 1
        self._update_turns()

    def _leave(self, lane: Lane) -> None:
        if lane is Lane.LIVE:
            self._live_seen = time.monotonic()
        self._busy[lane] -= 1
        self._update_turns()

    def _update_turns(self) -> None:
        for lane, turn in self._turn.items():
            if any(self._busy[earlier] for earlier in Lane if earlier < lane):
                turn.clear()
            else:
                turn.set()

    async def _upsert(
        self,
        target: Target,
        requests: Sequence[dict[str, Any]],
        indices: list[int],
        result: BatchResult,
    ) -> None:
        counts = [self._tokens(target.model, requests[i]["chunk"]) for i in indices]
        writes: list[asyncio.Task[None]] = []
        budget = self.settings.max_batch_tokens
        for group in sorted_groups(counts, self.settings.max_batch, lambda: budget):
            members = [indices[g] for g in group]
            chunks = [requests[i]["chunk"] for i in members]
            objects = await self._encode(target, chunks, sum(counts[g] for g in group), result)
            # Written while the next sub-batch encodes.
            writes.append(
                asyncio.ensure_future(self._write(target, members, requests, objects, result))
            )
        await asyncio.gather(*writes)

    async def _upsert_background(
        self,
        target: Target,
        requests: Sequence[dict[str, Any]],
        indices: list[int],
        result: BatchResult,
        lane: Lane,
    ) -> None:
        counts = [self._tokens(target.model, requests[i]["chunk"]) for i in indices]
        pace = self._paces.setdefault(target.model.spec.name, EncodePace())
        writing: asyncio.Task[None] | None = None
        members: list[int] = []
        objects: list[ChunkObject] = []
        for group in sorted_groups(
            counts,
            self.settings.max_batch,
            lambda: min(self.settings.max_batch_tokens, pace.max_tokens(self._slice())),
        ):
            await self._turn[lane].wait()
            encoded = [indices[g] for g in group]
            started = time.perf_counter()
            objects += await self._encode(
                target,
                [requests[i]["chunk"] for i in encoded],
                sum(counts[g] for g in group),
                result,
            )
            pace.observe(max(counts[g] for g in group) * len(group), time.perf_counter() - started)
            members += encoded
            # Written in batches as large as a live one, while the next slices encode.
            if len(objects) >= self.settings.max_batch:
                writing = await self._queue_write(
                    lane, writing, target, members, requests, objects, result
                )
                members, objects = [], []
        if objects:
            writing = await self._queue_write(
                lane, writing, target, members, requests, objects, result
            )
        if writing is not None:
            await writing

    def _slice(self) -> float:
        live = self._busy[Lane.LIVE] or time.monotonic() - self._live_seen < LIVE_RECENT_S
        return self.background.slice_s if live else self.background.idle_slice_s

    async def _queue_write(
        self,
        lane: Lane,
        previous: asyncio.Task[None] | None,
        target: Target,
        members: list[int],
        requests: Sequence[dict[str, Any]],
        objects: list[ChunkObject],
        result: BatchResult,
    ) -> asyncio.Task[None]:
        """A write behind the live lane, started once the previous one is done and it is the
        lane's turn: a write never queues behind more than one of a later lane."""
        if previous is not None:
            await previous
        await self._turn[lane].wait()
        return asyncio.ensure_future(self._write(target, members, requests, objects, result))

    async def _encode(
        self, target: Target, chunks: list[dict[str, Any]], tokens: int, result: BatchResult
    ) -> list[ChunkObject]:
        model = target.model
        started = time.perf_counter()
        with tracer.start_as_current_span(
            "encode",
            attributes={
                "streamproc.model_version": f"{model.spec.name}:{model.spec.version}",
                "streamproc.device": model.device,
                "streamproc.batch.size": len(chunks),
                "streamproc.batch.tokens": tokens,
            },
        ):
            vectors = await self._run(self._encode_pool, model.encode, [c["text"] for c in chunks])
            heading_vectors = await self._heading_vectors(target, chunks)
        result.encode_seconds += time.perf_counter() - started
        return [
            self._object(target, chunk, vector.tolist(), heading_vectors)
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]

    async def _heading_vectors(
        self, target: Target, chunks: Sequence[dict[str, Any]]
    ) -> dict[str, np.ndarray]:
        """Vectors of the chunks' heading paths. Headings repeat across the chunks of a section
        and across batches, so they are cached per target instead of encoded again."""
        cache = self._heading_cache.setdefault(target.collection, OrderedDict())
        wanted = {heading_text(c["heading_path"]) for c in chunks} - {""}
        missing = sorted(wanted - cache.keys())
        if missing:
            vectors = await self._run(self._encode_pool, target.model.encode, missing)
            cache.update(zip(missing, vectors, strict=True))
        for heading in wanted:
            cache.move_to_end(heading)
        while len(cache) > HEADING_CACHE_SIZE:
            cache.popitem(last=False)
        return {heading: cache[heading] for heading in wanted}

    async def _write(
        self,
        target: Target,
        members: list[int],
        requests: Sequence[dict[str, Any]],
        objects: list[ChunkObject],
        result: BatchResult,
    ) -> None:
        with _weaviate_span("batch upsert", target.collection, len(objects)) as span:
            started = time.perf_counter()
            by_uuid = dict(zip((o.uuid for o in objects), members, strict=True))
            pending = objects
            errors: dict[UUID, str] = {}
            for _ in range(OBJECT_ATTEMPTS):
                outcome = await self._with_backoff(
                    lambda batch=pending: self.store.upsert(target.collection, batch)
                )
                for uuid in outcome.written:
                    result.done.append(
                        self._done(target, requests[by_uuid[uuid]], "EMBEDDED", uuid)
                    )
                errors = outcome.failed
                pending = [o for o in pending if o.uuid in errors]
                if not pending:
                    break
            for uuid, message in errors.items():
                result.failed[by_uuid[uuid]] = f"weaviate rejected the object: {message}"
            result.write_seconds += time.perf_counter() - started
            if any(i in result.failed for i in members):
                span.set_status(Status(StatusCode.ERROR, "objects rejected"))

    async def _delete(
        self,
        target: Target,
        requests: Sequence[dict[str, Any]],
        indices: list[int],
        result: BatchResult,
    ) -> None:
        by_tenant: dict[str, list[int]] = {}
        for i in indices:
            by_tenant.setdefault(requests[i]["tenant"], []).append(i)
        for tenant, members in by_tenant.items():
            uuids = [object_uuid(requests[i]["chunk_key"]) for i in members]
            with _weaviate_span("delete", target.collection, len(uuids)):
                await self._with_backoff(
                    lambda t=tenant, u=uuids: self.store.delete(target.collection, t, u)
                )
            for i, uuid in zip(members, uuids, strict=True):
                result.done.append(self._done(target, requests[i], "DELETED", uuid))

    async def _with_backoff(self, call: Callable[[], T]) -> T:
        """Retry while Weaviate is unreachable; the stream waits meanwhile instead of dropping."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=wait_exponential_jitter(multiplier=0.2, max=30),
            before_sleep=_note_retry,
        ):
            with attempt:
                return await self._run(self._io_pool, _transient_on_weaviate_errors(call))
        raise AssertionError("unreachable: AsyncRetrying without a stop never gives up")

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _tokens(self, model: EmbeddingModel, chunk: dict[str, Any]) -> int:
        counted = chunk["token_counts"].get(model.spec.name)
        # A model added after the chunk was made has no count yet: 4 characters a token.
        return counted if counted is not None else max(1, chunk["char_count"] // 4)

    def _object(
        self,
        target: Target,
        chunk: dict[str, Any],
        vector: list[float],
        heading_vectors: dict[str, Any],
    ) -> ChunkObject:
        spec = target.model.spec
        vectors: dict[str, Sequence[float]] = {CONTENT_VECTOR: vector}
        heading = heading_text(chunk["heading_path"])
        if heading:
            vectors[HEADING_VECTOR] = heading_vectors[heading].tolist()
        return ChunkObject(
            uuid=object_uuid(chunk["chunk_key"]),
            tenant=chunk["tenant"],
            properties={
                "chunk_key": chunk["chunk_key"],
                "tenant": chunk["tenant"],
                "doc_id": chunk["doc_id"],
                "chunk_index": chunk["chunk_index"],
                "heading_path": chunk["heading_path"],
                "text": "" if self.settings.pii_mode else chunk["text"],
                "text_sha256": chunk["text_sha256"],
                "char_count": chunk["char_count"],
                "token_count": self._tokens(target.model, chunk),
                "truncated": chunk["truncated"],
                "model_id": spec.source,
                "model_revision": spec.revision or "",
                "model_version": spec.version,
                "policy_version": chunk["policy_version"],
                "source_uri": chunk["source_uri"] or "",
                "ingested_at": chunk["ingested_at"],
                "embedded_at": datetime.now(UTC),
            },
            vectors=vectors,
        )

    @staticmethod
    def _done(target: Target, request: dict[str, Any], status: str, uuid: UUID) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "chunk_key": request["chunk_key"],
            "tenant": request["tenant"],
            "doc_id": request["doc_id"],
            "op": request["op"],
            "status": status,
            "collection": target.collection,
            "model_name": target.model.spec.name,
            "model_version": target.model.spec.version,
            "vector_dim": target.model.dimension,
            "object_uuid": str(uuid),
            "latency_ms": int((now - request["ingested_at"]).total_seconds() * 1000),
            "embedded_at": now,
        }


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
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "weaviate unavailable, retrying",
        extra={"attempt": state.attempt_number, "error": str(error)},
    )


def _transient_on_weaviate_errors(call: Callable[[], T]) -> Callable[[], T]:
    def wrapped() -> T:
        try:
            return call()
        except WeaviateBaseError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc

    return wrapped
