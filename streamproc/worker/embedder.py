"""The embedder agent: embed requests, in micro-batches, to Weaviate and embed-done records."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.types import EventT
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind

from streamproc import telemetry
from streamproc.avro_codec import load_schemas
from streamproc.backfill.jobs import Job, live_write_collections, live_write_scopes
from streamproc.backfill.live import ScopedTarget, write_targets
from streamproc.backfill.live_load import LiveLoad
from streamproc.backfill.view import JobsView
from streamproc.delivery import crash, guarded, retry_transient
from streamproc.dlq import dead_letter, unexpected
from streamproc.errors import ConfigurationError, PermanentError, SchemaError
from streamproc.failpoints import fail_point
from streamproc.models import EmbeddingModel, ModelPool, load_model
from streamproc.naming import document_key
from streamproc.pipeline.embedder import Background, Embedder, Target
from streamproc.pipeline.ordered import InOrder
from streamproc.settings import Settings
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.app import faust_app, handed_check, outbox_for, watch
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
    schemas = load_schemas(settings.schemas_dir)
    embed_codec = schemas.codec("EmbedRequested")
    done_codec = schemas.codec("EmbedDone")
    source = app.topic(
        settings.topic("embed-requested"), key_serializer="raw", value_serializer="raw"
    )
    done_topic = settings.topic("embed-done")
    view = JobsView(settings)
    live = LiveLoad(settings)
    add_backfill(app, settings, embedder, store, models, view, live)

    async def backfill_targets() -> list[ScopedTarget]:
        """Every collection besides the configured ones that a backfill job has live traffic
        write, with the job's tenant scope. The calling task holds them until it ends: a
        retire of one is acknowledged only after that."""
        configured = {t.collection for t in embedder.targets}
        scopes = {
            collection: scope
            for collection, scope in live_write_scopes((await view.refresh()).values()).items()
            if collection not in configured
        }
        view.writers.hold(scopes)
        # Preloaded at start-up or by the job's replay; a job started since on another
        # worker loads here once. An unknown model raises: never skipped in silence.
        return [
            ScopedTarget(Target(await models.get(name), collection), tenant)
            for collection, (name, tenant) in scopes.items()
        ]

    group = f"{settings.worker.app_id}-embedder"
    inflight = watch(app, settings, source.get_topic_name(), group).inflight
    check_handed = handed_check(settings, group)

    @app.agent(source)
    async def embed(stream: faust.Stream) -> None:
        # A batch's backfill-target writes, DLQ sends and ack run behind the stream, so the
        # next batch's configured collections do not wait for them; acks stay in order.
        finishing = InOrder(MAX_UNFINISHED_BATCHES)
        try:
            async for taken in stream.noack_take(
                settings.embedder.max_events, within=settings.embedder.max_wait_s
            ):
                # Taken before a rebalance: the partition's new owner, or this worker again
                # after its seek to the committed offset, is handed them anew, and writing
                # them here could land after newer versions.
                generation = app.consumer_generation_id
                assigned = app.consumer.assignment()
                events = [
                    e
                    for e in taken
                    if e.message.generation_id == generation and e.message.tp in assigned
                ]
                if not events:
                    continue
                first = events[0].message
                links = [link for e in events if (link := telemetry.link_to(e.message.headers))]
                # A batch has many parents: it starts its own trace and links to every message.
                # The span ends when the batch is acked.
                span = tracer.start_span(
                    f"process {first.topic}",
                    context=Context(),
                    kind=SpanKind.CONSUMER,
                    links=links,
                    attributes={
                        **telemetry.consume_attributes(first.topic, first.partition, None, group),
                        "messaging.batch.message_count": len(events),
                    },
                )
                token = inflight.enter()
                try:
                    with trace.use_span(span):
                        await check_handed(events)
                        finish = await handle(stream, events, span)
                        done = await finishing.add(guarded("embedder: finishing a batch", finish))
                        # Ran, or cancelled unacked at a stop: no longer in flight either way.
                        done.add_done_callback(lambda _, t=token: inflight.leave(t))
                except asyncio.CancelledError:
                    inflight.leave(token)
                    span.end()
                    raise
                except BaseException as exc:
                    # Faust would restart the agent, ack what this batch held and commit
                    # across the gap.
                    crash("embedder", exc)
        finally:
            # Unacked batches are delivered again: at least once.
            finishing.cancel()

    async def handle(
        stream: faust.Stream, events: list[EventT], span: trace.Span
    ) -> Callable[[], Awaitable[None]]:
        """The batch into the configured collections, their embed-done records sent; returns
        the rest of the batch's work (backfill targets, DLQ, waiting for the sends, the ack),
        which ends the batch's span."""
        started = time.perf_counter()
        outbox = outbox_for(app)
        requests, kept = [], []
        for event in events:
            try:
                requests.append(embed_codec.decode(event.value or b""))
                kept.append(event)
            except Exception as exc:
                error = exc if isinstance(exc, SchemaError) else unexpected(exc, "undecodable")
                await dead_letter(outbox, event, error)
        headers_of = {
            r["chunk_key"]: e.message.headers for r, e in zip(requests, kept, strict=True)
        }
        batch_link = [Link(span.get_span_context())]

        async def publish(records: list[dict[str, Any]]) -> None:
            # Counted before they are sent: a reader who sees a record sees it counted.
            telemetry.count(
                {
                    "embedded": sum(
                        d["status"] == "EMBEDDED" and not d["unchanged"] for d in records
                    ),
                    "current": sum(d["unchanged"] for d in records),
                    "deleted": sum(d["status"] == "DELETED" for d in records),
                },
                role="embedder",
            )
            for done in records:
                telemetry.ingest_latency.record(
                    done["latency_ms"] / 1000, {"collection": done["collection"]}
                )
                # In the document's trace (child of the chunk's send), linked to the batch.
                with tracer.start_as_current_span(
                    f"send {done_topic}",
                    context=telemetry.extract(headers_of[done["chunk_key"]]),
                    kind=SpanKind.PRODUCER,
                    links=batch_link,
                    attributes=telemetry.publish_attributes(
                        done_topic,
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
                    await outbox.send(
                        done_topic,
                        document_key(done["tenant"], done["doc_id"]).encode(),
                        done_codec.encode(done),
                        telemetry.kafka_headers(),
                    )

        result = await embedder.handle(requests)
        await publish(result.done)
        processed: dict[TopicPartition, int] = {}
        for event in events:
            tp = TopicPartition(event.message.topic, event.message.partition)
            processed[tp] = max(processed.get(tp, 0), event.message.offset + 1)
        # Live load is what searches wait for: the configured collections.
        live.observe_batch(max((d["latency_ms"] for d in result.done), default=0) / 1000, processed)

        async def finish() -> None:
            with trace.use_span(span, end_on_exit=True):
                await finish_batch()
                for event in events:
                    await stream.ack(event)

        async def finish_batch() -> None:
            fail_point("embedder.finish")
            # Asked now, not when the batch came: a retired job's collection gets no more writes.
            # The job table's changelog is read again while Kafka is unavailable.
            extra = await retry_transient("backfill targets", backfill_targets)
            targets = [*embedder.targets, *(scope.target for scope in extra)]
            span.set_attributes(
                {
                    "streamproc.collections": ",".join(t.collection for t in targets),
                    "streamproc.model_versions": ",".join(
                        f"{t.model.spec.name}:{t.model.spec.version}" for t in targets
                    ),
                }
            )
            results = [result]
            for written in await write_targets(embedder, requests, extra):
                results.append(written)
                await publish(written.done)
            # One dead letter per request; the configured collection's reason wins.
            failed = {i: reason for r in reversed(results) for i, reason in r.failed.items()}
            for index, reason in sorted(failed.items()):
                await dead_letter(
                    outbox, kept[index], PermanentError(reason, reason="weaviate_rejected")
                )
            # Acked only after every send is confirmed.
            await outbox.confirm()
            done = [d for r in results for d in r.done]
            telemetry.batch_size.record(len(events))
            telemetry.encode_duration.record(sum(r.encode_seconds for r in results))
            telemetry.write_duration.record(sum(r.write_seconds for r in results))
            span.set_attributes({"streamproc.done": len(done), "streamproc.failed": len(failed)})
            log.info(
                "embedded batch",
                extra={
                    "events": len(events),
                    "done": len(done),
                    "failed": len(failed),
                    "encode_s": round(sum(r.encode_seconds for r in results), 3),
                    "write_s": round(sum(r.write_seconds for r in results), 3),
                    "batch_s": round(time.perf_counter() - started, 3),
                },
            )

        return finish

    return app


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
        except KeyError as exc:
            raise ConfigurationError(
                f"backfill jobs say live traffic must also write {collection} with model "
                f"{name!r}, which this worker's registry lacks: add it to STREAMPROC_MODELS, or "
                f"retire the collection (streamproc collections retire {collection})"
            ) from exc
        names.append(name)
    return [load_model(settings.model(n), settings.embedder.device) for n in names]
