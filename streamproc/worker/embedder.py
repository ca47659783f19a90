"""The embedder agent: embed requests, in micro-batches, to Weaviate and embed-done records."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.types import EventT
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind

from streamproc import telemetry
from streamproc.backfill.jobs import Job, live_write_collections, live_write_scopes
from streamproc.backfill.live import ScopedTarget, write_targets
from streamproc.backfill.live_load import LiveLoad
from streamproc.backfill.view import JobsView
from streamproc.delivery import Outbox, crash, guarded, retry_transient
from streamproc.dlq import dead_letter, unexpected
from streamproc.errors import (
    ConfigurationError,
    PermanentError,
    SchemaError,
    UnknownModelError,
)
from streamproc.failpoints import fail_point
from streamproc.models import EmbeddingModel, ModelPool, load_model
from streamproc.naming import document_key
from streamproc.pipeline.embedder import BatchResult, Embedder
from streamproc.pipeline.lanes import Background
from streamproc.pipeline.objects import Target
from streamproc.pipeline.ordered import InOrder
from streamproc.settings import EmbedderSettings, Settings
from streamproc.topics import topics_for
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.app import AgentContext, agent_context, faust_app, outbox_for
from streamproc.worker.backfill import add_backfill

log = logging.getLogger(__name__)
tracer = telemetry.tracer

# Embed batches whose backfill-target writes and ack may still be running behind the stream.
MAX_UNFINISHED_BATCHES = 4


def prepare_targets(
    store: WeaviateStore, settings: Settings, models: list[EmbeddingModel]
) -> list[Target]:
    """Create each target collection (refusing a dimension mismatch) and the alias if missing."""
    targets = [Target(m, settings.collection_for(m.spec)) for m in models]
    for target in targets:
        store.ensure_collection(
            target.collection,
            target.model.dimension,
            inference_url=settings.inference.url_for(target.model.spec.name),
        )
    active = settings.collection_for(settings.model(settings.active_model))
    alias = settings.weaviate.collection_prefix
    if any(t.collection == active for t in targets) and store.alias_target(alias) is None:
        store.point_alias(alias, active)
    return targets


def create_embedder_app(
    settings: Settings, embedder: Embedder, store: WeaviateStore, models: ModelPool
) -> faust.App:
    app = faust_app(settings, "embedder")
    topics = topics_for(settings)
    source = app.topic(topics.embed_requested.name, key_serializer="raw", value_serializer="raw")
    view = JobsView(settings)
    live = LiveLoad(settings)
    add_backfill(app, settings, embedder, store, models, view, live)
    agent = EmbedAgent(
        agent_context(app, settings, "embedder", source.get_topic_name()),
        embedder,
        BackfillTargets(embedder, view, models),
        live,
        settings.embedder,
    )
    app.agent(source, name="embed")(agent.run)
    return app


class BackfillTargets:
    """Every collection besides the configured ones that a backfill job has live traffic
    write, with the job's tenant scope."""

    def __init__(self, embedder: Embedder, view: JobsView, models: ModelPool) -> None:
        self.embedder = embedder
        self.view = view
        self.models = models

    async def __call__(self) -> list[ScopedTarget]:
        """The calling task holds them until it ends: a retire of one is acknowledged only
        after that."""
        configured = {t.collection for t in self.embedder.targets}
        scopes = {
            collection: scope
            for collection, scope in live_write_scopes((await self.view.refresh()).values()).items()
            if collection not in configured
        }
        self.view.writers.hold(scopes)
        # Preloaded at start-up or by the job's replay; a job started since on another
        # worker loads here once. An unknown model raises: never skipped in silence.
        return [
            ScopedTarget(Target(await self.models.get(name), collection), tenant)
            for collection, (name, tenant) in scopes.items()
        ]


@dataclass
class Batch:
    """One taken batch on its way through the agent."""

    events: list[EventT]
    span: trace.Span
    outbox: Outbox
    started: float = field(default_factory=time.perf_counter)
    # The decodable events, and their requests, by request index.
    kept: list[EventT] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    results: list[BatchResult] = field(default_factory=list)

    @cached_property
    def headers_of(self) -> dict[str, Any]:
        """Built once the requests are decoded (first read in `_publish`), then shared by the
        configured collections' and every backfill target's embed-done records."""
        return {
            r["chunk_key"]: e.message.headers for r, e in zip(self.requests, self.kept, strict=True)
        }


class EmbedAgent:
    """Takes embed requests in micro-batches, writes them to the configured collections, then,
    behind the stream, to backfill targets, and acks each batch once its writes and embed-done
    records are confirmed."""

    def __init__(
        self,
        context: AgentContext,
        embedder: Embedder,
        backfill_targets: BackfillTargets,
        live: LiveLoad,
        batching: EmbedderSettings,
    ) -> None:
        self.context = context
        self.app = context.app
        self.topics = context.topics
        self.embedder = embedder
        self.backfill_targets = backfill_targets
        self.live = live
        self.batching = batching

    async def run(self, stream: faust.Stream) -> None:
        # A batch's backfill-target writes, DLQ sends and ack run behind the stream, so the
        # next batch's configured collections do not wait for them; acks stay in order.
        finishing = InOrder(MAX_UNFINISHED_BATCHES)
        try:
            async for taken in stream.noack_take(
                self.batching.max_events, within=self.batching.max_wait_s
            ):
                if events := self._current(taken):
                    await self._take(stream, events, finishing)
        finally:
            # Unacked batches are delivered again: at least once.
            finishing.cancel()

    def _current(self, taken: list[EventT]) -> list[EventT]:
        """Less the events taken before a rebalance: the partition's new owner, or this worker
        again after its seek to the committed offset, is handed them anew, and writing them
        here could land after newer versions."""
        generation = self.app.consumer_generation_id
        assigned = self.app.consumer.assignment()
        return [
            e for e in taken if e.message.generation_id == generation and e.message.tp in assigned
        ]

    async def _take(self, stream: faust.Stream, events: list[EventT], finishing: InOrder) -> None:
        span = self._span(events)
        token = self.context.inflight.enter()
        try:
            with trace.use_span(span):
                await self.context.check_handed(events)
                batch = await self._write_configured(Batch(events, span, outbox_for(self.app)))
                finish = guarded(
                    "embedder: finishing a batch", partial(self._finish, stream, batch)
                )
                done = await finishing.add(finish)
                # Ran, or cancelled unacked at a stop: no longer in flight either way.
                done.add_done_callback(lambda _, t=token: self.context.inflight.leave(t))
        except asyncio.CancelledError:
            self.context.inflight.leave(token)
            span.end()
            raise
        except BaseException as exc:
            # Faust would restart the agent, ack what this batch held and commit across the gap.
            crash("embedder", exc)

    def _span(self, events: list[EventT]) -> trace.Span:
        """A batch has many parents: it starts its own trace and links to every message. The
        span ends when the batch is acked."""
        first = events[0].message
        links = [link for e in events if (link := telemetry.link_to(e.message.headers))]
        return tracer.start_span(
            f"process {first.topic}",
            context=Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **telemetry.consume_attributes(
                    first.topic, first.partition, None, self.context.group
                ),
                "messaging.batch.message_count": len(events),
            },
        )

    async def _write_configured(self, batch: Batch) -> Batch:
        """The batch into the configured collections, their embed-done records sent."""
        for event in batch.events:
            try:
                batch.requests.append(self.topics.embed_requested.decode(event.value or b""))
                batch.kept.append(event)
            except Exception as exc:
                error = exc if isinstance(exc, SchemaError) else unexpected(exc, "undecodable")
                await dead_letter(batch.outbox, event, error)
        result = await self.embedder.handle(batch.requests)
        batch.results.append(result)
        await self._publish(batch, result.done)
        processed: dict[TopicPartition, int] = {}
        for event in batch.events:
            tp = TopicPartition(event.message.topic, event.message.partition)
            processed[tp] = max(processed.get(tp, 0), event.message.offset + 1)
        # Live load is what searches wait for: the configured collections.
        slowest = max((d["latency_ms"] for d in result.done), default=0) / 1000
        self.live.observe_batch(slowest, processed)
        return batch

    async def _publish(self, batch: Batch, records: list[dict[str, Any]]) -> None:
        # Counted before they are sent: a reader who sees a record sees it counted.
        telemetry.count(
            {
                "embedded": sum(d["status"] == "EMBEDDED" and not d["unchanged"] for d in records),
                "current": sum(d["unchanged"] for d in records),
                "deleted": sum(d["status"] == "DELETED" for d in records),
            },
            role="embedder",
        )
        topic = self.topics.embed_done
        headers_of = batch.headers_of
        batch_link = [Link(batch.span.get_span_context())]
        for done in records:
            telemetry.ingest_latency.record(
                done["latency_ms"] / 1000, {"collection": done["collection"]}
            )
            # In the document's trace (child of the chunk's send), linked to the batch.
            with tracer.start_as_current_span(
                f"send {topic.name}",
                context=telemetry.extract(headers_of[done["chunk_key"]]),
                kind=SpanKind.PRODUCER,
                links=batch_link,
                attributes=telemetry.publish_attributes(
                    topic.name,
                    **{
                        "streamproc.tenant": done["tenant"],
                        "streamproc.doc_id": done["doc_id"],
                        "streamproc.chunk_key": done["chunk_key"],
                        "streamproc.status": done["status"],
                        "streamproc.collection": done["collection"],
                        "streamproc.model_version": done["model_version"],
                    },
                ),
            ):
                await batch.outbox.send(
                    topic.name,
                    document_key(done["tenant"], done["doc_id"]).encode(),
                    topic.encode(done),
                    telemetry.kafka_headers(),
                )

    async def _finish(self, stream: faust.Stream, batch: Batch) -> None:
        """The rest of the batch's work (backfill targets, DLQ, waiting for the sends), then
        the ack, which ends the batch's span."""
        with trace.use_span(batch.span, end_on_exit=True):
            await self._write_backfill_targets(batch)
            failed = await self._dead_letter_failed(batch)
            # Acked only after every send is confirmed.
            await batch.outbox.confirm()
            self._report(batch, failed)
            for event in batch.events:
                await stream.ack(event)

    async def _write_backfill_targets(self, batch: Batch) -> None:
        fail_point("embedder.finish")
        # Asked now, not when the batch came: a retired job's collection gets no more writes.
        # The job table's changelog is read again while Kafka is unavailable.
        extra = await retry_transient("backfill targets", self.backfill_targets)
        targets = [*self.embedder.targets, *(scope.target for scope in extra)]
        batch.span.set_attributes(
            {
                "streamproc.collections": ",".join(t.collection for t in targets),
                "streamproc.model_versions": ",".join(
                    f"{t.model.spec.name}:{t.model.spec.version}" for t in targets
                ),
            }
        )
        for written in await write_targets(self.embedder, batch.requests, extra):
            batch.results.append(written)
            await self._publish(batch, written.done)

    async def _dead_letter_failed(self, batch: Batch) -> int:
        """One dead letter per failed request; the configured collection's reason wins."""
        failed = {i: reason for r in reversed(batch.results) for i, reason in r.failed.items()}
        for index, reason in sorted(failed.items()):
            await dead_letter(
                batch.outbox, batch.kept[index], PermanentError(reason, reason="weaviate_rejected")
            )
        return len(failed)

    def _report(self, batch: Batch, failed: int) -> None:
        done = sum(len(r.done) for r in batch.results)
        encode_s = sum(r.encode_seconds for r in batch.results)
        write_s = sum(r.write_seconds for r in batch.results)
        telemetry.batch_size.record(len(batch.events))
        telemetry.encode_duration.record(encode_s)
        telemetry.write_duration.record(write_s)
        batch.span.set_attributes({"streamproc.done": done, "streamproc.failed": failed})
        log.info(
            "embedded batch",
            extra={
                "events": len(batch.events),
                "done": done,
                "failed": failed,
                "encode_s": round(encode_s, 3),
                "write_s": round(write_s, 3),
                "batch_s": round(time.perf_counter() - batch.started, 3),
            },
        )


def background_pacing(settings: Settings) -> Background:
    return Background(settings.backfill.encode_slice_s, settings.backfill.idle_encode_slice_s)


def load_models(settings: Settings, jobs: Iterable[Job] = ()) -> list[EmbeddingModel]:
    """The configured models, and the model of every collection a backfill job has live
    traffic write: loaded before the worker consumes anything, so a live batch never waits for
    a load, and a worker that could not write such a collection refuses to start instead of
    skipping it."""
    names = [spec.name for spec in settings.target_models]
    configured = {settings.collection_for(spec) for spec in settings.target_models}
    for collection, name in live_write_collections(jobs).items():
        if collection in configured or name in names:
            continue
        try:
            settings.model(name)
        except UnknownModelError as exc:
            raise ConfigurationError(
                f"backfill jobs say live traffic must also write {collection} with model "
                f"{name!r}, which this worker's registry lacks: add it to STREAMPROC_MODELS, or "
                f"retire the collection (streamproc collections retire {collection})"
            ) from exc
        names.append(name)
    return [load_model(settings.model(n), settings.embedder.device) for n in names]
