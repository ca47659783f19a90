"""The backfill agent's work: replay the compacted chunk topic into a job's target collection.

Runs inside the embedder worker that owns the job table, beside live embedding and sharing its
encoder, which serves live batches first. Progress is saved to the table after every batch, so
a worker killed at any point resumes from its last saved offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import trace

from streamproc import telemetry
from streamproc.backfill import replay
from streamproc.backfill.chunk_reader import (
    Clients,
    by_partition,
    record_time,
    replay_clients,
    scan,
)
from streamproc.backfill.job_store import JobStore, Stopped
from streamproc.backfill.jobs import Job, now
from streamproc.backfill.live_load import LiveLoad
from streamproc.backfill.view import JobsView
from streamproc.errors import (
    CollectionMissingError,
    PermanentError,
    TransientError,
)
from streamproc.kafka_io import partitions_of
from streamproc.models import EmbeddingModel, ModelPool
from streamproc.naming import object_uuid
from streamproc.pipeline.embedder import Embedder
from streamproc.pipeline.lanes import Lane
from streamproc.pipeline.objects import Target
from streamproc.settings import Settings
from streamproc.topics import topics_for
from streamproc.weaviate_store import WeaviateStore

if TYPE_CHECKING:
    from streamproc.backfill.verification import Verification

log = logging.getLogger(__name__)

# While throttled, the reason shown in `backfill status` is refreshed this often at most: often
# enough to follow what holds the replay, rarely enough not to write the job table every poll.
THROTTLE_SAVE_INTERVAL_S = 5.0


class Replayer:
    def __init__(
        self,
        settings: Settings,
        store: WeaviateStore,
        embedder: Embedder,
        models: ModelPool,
        jobs: JobStore,
        view: JobsView,
        live: LiveLoad,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.models = models
        self.jobs = jobs
        self.view = view
        self.live = live
        self.chunks = topics_for(settings).chunks

    async def run(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            # Before any await: a retire of the collection now waits for this task to end.
            self.view.writers.hold([job["target_collection"]])
        try:
            async with replay_clients(self.settings) as kafka:
                await self._run(job_id, kafka)
        except Stopped:
            log.info("backfill stopped", extra={"job_id": job_id})

    async def _run(self, job_id: str, kafka: Clients) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        try:
            model = await self.models.get(job["model_name"])
            target = Target(model, job["target_collection"])
            await asyncio.to_thread(self._prepare_collection, target)
            tps = [
                TopicPartition(self.chunks.name, p)
                for p in sorted(await partitions_of(kafka.offsets, self.chunks.name))
            ]
            kafka.reader.assign(tps)
            # Fetched only while _scan reads them: no idle polling beside the encoder.
            kafka.reader.pause(*tps)
            if job["state"] == "PENDING":
                job = {**job, "state": "RUNNING", "started_at": now()}
                self.jobs.save(job)
                log.info(
                    "backfill started", extra={"job_id": job_id, "collection": target.collection}
                )
            if not job["watermarks"]:
                job = await self._first_pass(job, kafka, tps)
            await self._replay(job, target, kafka, tps)
        except (Stopped, asyncio.CancelledError, TransientError, KafkaError):
            # Cancelled, ownership moved, or a service is down: the saved progress stays and
            # the owner resumes from it.
            raise
        except Exception as exc:  # any other failure ends the job, saying why
            self._fail(job_id, exc)

    def _prepare_collection(self, target: Target) -> None:
        serving = self.store.alias_target(self.settings.weaviate.collection_prefix)
        if serving == target.collection:
            raise PermanentError(
                f"{target.collection} is served by the alias; a backfill never writes it"
            )
        self.store.ensure_collection(
            target.collection,
            target.model.dimension,
            inference_url=self.settings.inference.url_for(target.model.spec.name),
        )

    async def _first_pass(self, job: Job, kafka: Clients, tps: list[TopicPartition]) -> Job:
        # Every embedder refreshes its job view before each live batch: once RUNNING is on the
        # changelog, live batches write the target too, so watermarks taken now miss nothing.
        while (self.view.jobs.get(job["job_id"]) or {}).get("state") != "RUNNING":
            await self.view.refresh()
            await asyncio.sleep(0.05)
        starts = by_partition(await kafka.offsets.beginning_offsets(tps))
        ends = by_partition(await kafka.offsets.end_offsets(tps))
        job = {
            **job,
            "range_starts": starts,
            "positions": dict(starts),
            "watermarks": ends,
            "items_total": replay.pass_size(starts, ends),
        }
        self.jobs.save(job)
        return job

    async def _replay(
        self,
        job: Job,
        target: Target,
        kafka: Clients,
        tps: list[TopicPartition],
    ) -> None:
        # A pass resumed half-way may have written before the crash: count it as writing.
        writes = int(job["positions"] != job["range_starts"])
        while True:
            with telemetry.tracer.start_as_current_span(
                "backfill pass",
                attributes={
                    "streamproc.job_id": job["job_id"],
                    "streamproc.pass": job["pass_number"],
                    "streamproc.collection": target.collection,
                },
            ):
                job, written = await self._pass(job, target, kafka)
            writes += written
            ends = by_partition(await kafka.offsets.end_offsets(tps))
            budget = self.settings.backfill.max_catch_up_passes
            after = replay.after_pass(job["pass_number"], writes, job["watermarks"], ends, budget)
            if after is replay.After.COMPLETE:
                break
            if after is replay.After.OUTRUN:
                raise PermanentError(
                    f"catch-up pass {job['pass_number']} still wrote {writes} chunks after "
                    f"{budget} catch-up passes: live updates outran the replay, and the "
                    "collection may hold a version that a later record replaced or deleted. "
                    "Start the job again when live traffic is lower (it skips what the "
                    "collection already holds), or raise backfill.max_catch_up_passes"
                )
            job = {
                **job,
                "pass_number": job["pass_number"] + 1,
                "range_starts": dict(job["watermarks"]),
                "positions": dict(job["watermarks"]),
                "watermarks": ends,
                "items_total": job["items_total"] + replay.pass_size(job["watermarks"], ends),
            }
            self.jobs.save(job)
            writes = 0
        job = {**job, "state": "COMPLETED", "finished_at": now(), "throttled": None}
        self.jobs.save(job)
        telemetry.reembed_completed.add(1)
        log.info(
            "backfill completed",
            extra={
                "job_id": job["job_id"],
                "reembedded": job["items_reembedded"],
                "passes": job["pass_number"] + 1,
            },
        )
        if job["auto_promote"]:
            await self._auto_promote(job, target)

    async def _pass(self, job: Job, target: Target, kafka: Clients) -> tuple[Job, int]:
        """Replay [positions, watermarks) of every partition; returns the job and the writes."""
        tenant = job["tenant"]
        written = 0
        for partition, end in sorted(job["watermarks"].items()):
            tp = TopicPartition(self.chunks.name, int(partition))
            last = replay.last_offsets(
                [
                    (r.offset, r.key.decode())
                    async for r in scan(
                        kafka.reader, tp, job["range_starts"].get(partition, 0), end
                    )
                    if r.key is not None and replay.in_scope(r.key.decode(), tenant)
                ]
            )
            batch: list[ConsumerRecord[bytes, bytes]] = []
            position = job["positions"].get(partition, 0)
            async for record in scan(kafka.reader, tp, position, end):
                key = record.key.decode() if record.key is not None else ""
                if last.get(key) == record.offset:
                    batch.append(record)
                if len(batch) >= self.settings.backfill.batch_size:
                    job, n = await self._batch(job, target, batch, kafka)
                    written += n
                    job = self._advance(job, partition, record.offset + 1)
                    batch = []
            if batch:
                job, n = await self._batch(job, target, batch, kafka)
                written += n
            job = self._advance(job, partition, end)
        return job, written

    def _advance(self, job: Job, partition: str, offset: int) -> Job:
        moved = offset - job["positions"].get(partition, 0)
        job = {
            **job,
            "positions": {**job["positions"], partition: offset},
            "items_done": job["items_done"] + max(0, moved),
        }
        self.jobs.save(job)
        return job

    async def _batch(
        self,
        job: Job,
        target: Target,
        records: list[ConsumerRecord[bytes, bytes]],
        kafka: Clients,
    ) -> tuple[Job, int]:
        started = time.perf_counter()
        job = await self._wait_for_live(job, kafka)
        waited = time.perf_counter() - started
        values = {
            r.key.decode(): (self.chunks.decode(r.value) if r.value is not None else None, r)
            for r in records
            if r.key is not None
        }
        try:
            held = await asyncio.to_thread(self._held, target.collection, values)
            read = time.perf_counter() - started - waited
            requests, skipped = _requests(values, held)
            result = (
                await self.embedder.handle(requests, [target], lane=Lane.REPLAY)
                if requests
                else None
            )
        except CollectionMissingError:
            # Retired and dropped: the job stops. Dropped behind its back: it fails, saying so.
            self.jobs.check(job["job_id"])
            raise
        if result is not None and result.failed:
            reasons = sorted(set(result.failed.values()))
            raise PermanentError(f"{len(result.failed)} objects rejected by Weaviate: {reasons[0]}")
        upserted = sum(r["op"] == "UPSERT" for r in requests)
        telemetry.reembed_batches.add(1, {"collection": target.collection})
        telemetry.reembed_items.add(upserted, {"collection": target.collection})
        job = _counted(job, upserted, len(requests) - upserted, skipped)
        log.info(
            "backfill batch",
            extra={
                "job_id": job["job_id"],
                "records": len(records),
                "written": len(requests),
                "skipped": skipped,
                "throttled_s": round(waited, 3),
                "read_s": round(read, 3),
                "encode_s": round(result.encode_seconds, 3) if result else 0.0,
                "write_s": round(result.write_seconds, 3) if result else 0.0,
                "batch_s": round(time.perf_counter() - started, 3),
            },
        )
        return job, len(requests)

    def _held(
        self, collection: str, values: Mapping[str, tuple[Any, Any]]
    ) -> dict[UUID, replay.Held]:
        by_tenant: dict[str, list[UUID]] = {}
        for key in values:
            by_tenant.setdefault(key.split("/", 1)[0], []).append(object_uuid(key))
        held: dict[UUID, replay.Held] = {}
        for tenant, uuids in by_tenant.items():
            for uuid, (ingested_at, sha) in self.store.held(collection, tenant, uuids).items():
                held[uuid] = replay.Held(ingested_at, sha)
        return held

    async def _wait_for_live(self, job: Job, kafka: Clients) -> Job:
        """Live traffic first: pause while the live path is behind, and say so in the job."""
        saved = -THROTTLE_SAVE_INTERVAL_S
        while (reason := await self.live.reason(kafka.admin, kafka.offsets)) is not None:
            if reason != job["throttled"] and time.monotonic() - saved >= THROTTLE_SAVE_INTERVAL_S:
                job = {**job, "throttled": reason}
                self.jobs.save(job)
                saved = time.monotonic()
                log.info("backfill throttled", extra={"job_id": job["job_id"], "reason": reason})
            else:
                self.jobs.check(job["job_id"])
            await asyncio.sleep(0.5)
        if job["throttled"]:
            job = {**job, "throttled": None}
            self.jobs.save(job)
        return job

    async def _auto_promote(self, job: Job, target: Target) -> None:
        from streamproc.backfill.alias import VerificationFailed

        try:
            # On a thread of its own, start to end: the worker's loop keeps serving live
            # batches meanwhile (verification reads whole collections and the chunk topic, and
            # the client's calls block), and a replay cancelled mid-way never leaves the alias
            # flipped without its alias-changes record.
            report, previous = await asyncio.to_thread(
                _promote, self.settings, target.collection, target.model
            )
            verdict = f"promoted (alias was {previous}): {report.summary()}"
        except VerificationFailed as exc:
            verdict = f"not promoted: {exc}"
        log.info("backfill auto-promote", extra={"job_id": job["job_id"], "verdict": verdict})
        current = self.jobs.get(job["job_id"])
        if current is not None:
            self.jobs.put({**current, "verification": verdict})

    def _fail(self, job_id: str, exc: Exception) -> None:
        telemetry.reembed_failed.add(1)
        telemetry.record_error(trace.get_current_span(), exc)
        log.error(
            "backfill failed", extra={"job_id": job_id, "error": f"{type(exc).__name__}: {exc}"}
        )
        current = self.jobs.get(job_id)
        if current is not None and current["state"] not in ("CANCELLED", "COMPLETED"):
            self.jobs.put(
                {
                    **current,
                    "state": "FAILED",
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "throttled": None,
                    "finished_at": now(),
                }
            )


def _promote(
    settings: Settings, collection: str, model: EmbeddingModel
) -> tuple[Verification, str | None]:
    from streamproc.backfill.alias import verify_and_promote

    return asyncio.run(verify_and_promote(settings, collection, model))


def _requests(
    values: Mapping[str, tuple[Any, ConsumerRecord[bytes, bytes]]],
    held: Mapping[UUID, replay.Held],
) -> tuple[list[dict[str, Any]], int]:
    """The writes a batch needs given what the collection holds, and how many it skips."""
    requests: list[dict[str, Any]] = []
    skipped = 0
    for key, (value, record) in values.items():
        action = replay.decide(value, held.get(object_uuid(key)))
        if action in (replay.Action.UPSERT, replay.Action.DELETE):
            requests.append(replay.as_request(key, value, record_time(record)))
        elif action is replay.Action.SKIP:
            skipped += 1
    return requests, skipped


def _counted(job: Job, upserted: int, deleted: int, skipped: int) -> Job:
    return {
        **job,
        "batches": job["batches"] + 1,
        "items_reembedded": job["items_reembedded"] + upserted,
        "items_deleted": job["items_deleted"] + deleted,
        "items_skipped": job["items_skipped"] + skipped,
    }
