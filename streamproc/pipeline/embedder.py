"""A micro-batch of embed requests in, confirmed Weaviate writes and embed-done records out.

Encoding runs on its own thread (torch releases the GIL), Weaviate writes on another, so the
event loop keeps Kafka heartbeats going. Within one batch, sub-batch k+1 is encoded while
sub-batch k is written; the batch's offsets are acked only after every write is confirmed.

Work comes in three lanes (`pipeline/lanes.py`): live batches into the configured collections,
live batches into backfill targets, and backfill replays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import numpy as np

from streamproc.errors import (
    CollectionMissingError,
    ConfigurationError,
)
from streamproc.naming import object_uuid
from streamproc.pipeline.batching import EncodePace, conflict_free_segments, sorted_groups
from streamproc.pipeline.heading_cache import HeadingCache
from streamproc.pipeline.lanes import Background, Lane, Lanes
from streamproc.pipeline.objects import (
    Target,
    chunk_object,
    done_record,
    heading_text,
    token_count,
)
from streamproc.pipeline.weaviate_io import WeaviateIO
from streamproc.settings import EmbedderSettings
from streamproc.telemetry import tracer
from streamproc.weaviate_schema import ChunkObject
from streamproc.weaviate_store import WeaviateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# Heading vectors kept per target collection (a few MB at 384 dimensions).
HEADING_CACHE_SIZE = 4096


@dataclass
class BatchResult:
    done: list[dict[str, Any]] = field(default_factory=list)
    # Request index -> reason, for requests that go to the DLQ.
    failed: dict[int, str] = field(default_factory=dict)
    encode_seconds: float = 0.0
    write_seconds: float = 0.0


class Embedder:
    def __init__(
        self,
        targets: Sequence[Target],
        store: WeaviateStore,
        settings: EmbedderSettings,
        background: Background,
    ) -> None:
        self.targets = list(targets)
        self.weaviate = WeaviateIO(store)
        self.settings = settings
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self._heading_cache: dict[str, HeadingCache] = {}
        # Collections found missing, each logged once.
        self._missing: set[str] = set()
        self._paces: dict[str, EncodePace] = {}
        self._lanes = Lanes(background)

    def close(self) -> None:
        self._encode_pool.shutdown(wait=True)
        self.weaviate.close()

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
        with self._lanes.working(lane):
            result = BatchResult()
            segments = conflict_free_segments([r["chunk_key"] for r in requests])
            for target in self.targets if targets is None else targets:
                done, failed = len(result.done), dict(result.failed)
                try:
                    for segment in segments:
                        upserts = await self._changed(
                            target,
                            requests,
                            [i for i in segment if requests[i]["op"] == "UPSERT"],
                            result,
                        )
                        deletes = [i for i in segment if requests[i]["op"] == "DELETE"]
                        if lane is Lane.LIVE:
                            await self._upsert(target, requests, upserts, result)
                        else:
                            await self._upsert_background(target, requests, upserts, result, lane)
                        await self._delete(target, requests, deletes, result)
                except CollectionMissingError as exc:
                    self._skip_missing(target, exc)
                    # A skipped target adds nothing: no embed-done, no dead letter.
                    del result.done[done:]
                    result.failed = failed
            return result

    def _skip_missing(self, target: Target, exc: CollectionMissingError) -> None:
        """A backfill target can be dropped (`collections retire`) while a batch that resolved
        it is in flight: it is skipped. A configured collection must exist."""
        if any(t.collection == target.collection for t in self.targets):
            raise ConfigurationError(
                f"configured collection {target.collection} is missing in Weaviate; "
                f"restart the worker to create it again, or configure another model"
            ) from exc
        if target.collection not in self._missing:
            self._missing.add(target.collection)
            log.warning(
                "collection missing, skipped as a target", extra={"collection": target.collection}
            )

    async def _changed(
        self,
        target: Target,
        requests: Sequence[dict[str, Any]],
        indices: list[int],
        result: BatchResult,
    ) -> list[int]:
        """`indices` less the `if_changed` requests whose text the collection already holds;
        those are reported current without being encoded."""
        checked = [i for i in indices if requests[i]["if_changed"]]
        if not checked:
            return indices
        held = await self._held(target, requests, checked)
        current = {
            i for i in checked if i in held and held[i][1] == requests[i]["chunk"]["text_sha256"]
        }
        for i in sorted(current):
            self._current(target, requests[i], result)
        return [i for i in indices if i not in current]

    async def _held(
        self, target: Target, requests: Sequence[dict[str, Any]], members: list[int]
    ) -> dict[int, tuple[Any, str]]:
        """(ingested_at, text_sha256) of what the collection holds of these requests' chunks,
        by request index; read again with backoff while Weaviate is unavailable."""
        by_tenant: dict[str, dict[UUID, int]] = {}
        for i in members:
            by_tenant.setdefault(requests[i]["tenant"], {})[
                object_uuid(requests[i]["chunk_key"])
            ] = i
        held: dict[int, tuple[Any, str]] = {}
        for tenant, member in by_tenant.items():
            found = await self.weaviate.held(target.collection, tenant, list(member))
            held.update({member[uuid]: version for uuid, version in found.items()})
        return held

    def _current(self, target: Target, request: dict[str, Any], result: BatchResult) -> None:
        """Reported done without a write: the collection holds this text, or a newer one."""
        uuid = object_uuid(request["chunk_key"])
        result.done.append({**done_record(target, request, "EMBEDDED", uuid), "unchanged": True})

    async def _upsert(
        self,
        target: Target,
        requests: Sequence[dict[str, Any]],
        indices: list[int],
        result: BatchResult,
    ) -> None:
        counts = [token_count(target.model, requests[i]["chunk"]) for i in indices]
        writes: list[asyncio.Task[None]] = []
        budget = self.settings.max_batch_tokens
        try:
            for group in sorted_groups(counts, self.settings.max_batch, lambda: budget):
                members = [indices[g] for g in group]
                chunks = [requests[i]["chunk"] for i in members]
                objects = await self._encode(target, chunks, sum(counts[g] for g in group), result)
                # Written while the next sub-batch encodes.
                writes.append(
                    asyncio.ensure_future(
                        self._write_unless_newer(target, members, requests, objects, result)
                    )
                )
            await asyncio.gather(*writes)
        finally:
            # After a failure, no write of this call may still add to `result`.
            for write in writes:
                write.cancel()

    async def _upsert_background(
        self,
        target: Target,
        requests: Sequence[dict[str, Any]],
        indices: list[int],
        result: BatchResult,
        lane: Lane,
    ) -> None:
        counts = [token_count(target.model, requests[i]["chunk"]) for i in indices]
        pace = self._paces.setdefault(target.model.spec.name, EncodePace())
        writing: asyncio.Task[None] | None = None
        members: list[int] = []
        objects: list[ChunkObject] = []
        try:
            for group in sorted_groups(
                counts,
                self.settings.max_batch,
                lambda: min(self.settings.max_batch_tokens, pace.max_tokens(self._lanes.slice_s())),
            ):
                await self._lanes.turn(lane)
                encoded = [indices[g] for g in group]
                started = time.perf_counter()
                objects += await self._encode(
                    target,
                    [requests[i]["chunk"] for i in encoded],
                    sum(counts[g] for g in group),
                    result,
                )
                pace.observe(
                    max(counts[g] for g in group) * len(group), time.perf_counter() - started
                )
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
        finally:
            # After a failure, no write of this call may still add to `result`.
            if writing is not None:
                writing.cancel()

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
        await self._lanes.turn(lane)
        return asyncio.ensure_future(
            self._write_unless_newer(target, members, requests, objects, result)
        )

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
            chunk_object(
                target, chunk, vector.tolist(), heading_vectors, pii_mode=self.settings.pii_mode
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]

    async def _heading_vectors(
        self, target: Target, chunks: Sequence[dict[str, Any]]
    ) -> dict[str, np.ndarray]:
        """Vectors of the chunks' heading paths. Headings repeat across the chunks of a section
        and across batches, so they are cached per target instead of encoded again."""
        cache = self._heading_cache.setdefault(target.collection, HeadingCache(HEADING_CACHE_SIZE))
        wanted = {heading_text(c["heading_path"]) for c in chunks} - {""}
        # Taken before the await: another lane may evict them meanwhile.
        found = cache.hits(wanted)
        missing = sorted(wanted - found.keys())
        if missing:
            vectors = await self._run(self._encode_pool, target.model.encode, missing)
            fresh = dict(zip(missing, vectors, strict=True))
            cache.add(fresh)
            found.update(fresh)
        return found

    async def _write_unless_newer(
        self,
        target: Target,
        members: list[int],
        requests: Sequence[dict[str, Any]],
        objects: list[ChunkObject],
        result: BatchResult,
    ) -> None:
        """Write, except the objects the collection already holds in a newer version: a
        replay's stale record, or a batch of a member that lost its partitions, never
        overwrites a live write that came after it. Checked right before the write; what
        remains is the moment between the two calls."""
        held = await self._held(target, requests, members)
        keep = []
        for member, obj in zip(members, objects, strict=True):
            if member in held and held[member][0] > obj.properties["ingested_at"]:
                self._current(target, requests[member], result)
            else:
                keep.append((member, obj))
        if keep:
            await self._write(target, [m for m, _ in keep], requests, [o for _, o in keep], result)

    async def _write(
        self,
        target: Target,
        members: list[int],
        requests: Sequence[dict[str, Any]],
        objects: list[ChunkObject],
        result: BatchResult,
    ) -> None:
        started = time.perf_counter()
        outcome = await self.weaviate.upsert(target.collection, objects)
        member = {o.uuid: m for o, m in zip(objects, members, strict=True)}
        for uuid in outcome.written:
            result.done.append(done_record(target, requests[member[uuid]], "EMBEDDED", uuid))
        for uuid, message in outcome.failed.items():
            result.failed[member[uuid]] = f"weaviate rejected the object: {message}"
        result.write_seconds += time.perf_counter() - started

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
            member = {object_uuid(requests[i]["chunk_key"]): i for i in members}
            outcome = await self.weaviate.delete(target.collection, tenant, list(member))
            for uuid in outcome.written:
                result.done.append(done_record(target, requests[member[uuid]], "DELETED", uuid))
            for uuid, message in outcome.failed.items():
                result.failed[member[uuid]] = f"weaviate refused the delete: {message}"

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
