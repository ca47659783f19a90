"""The Faust apps: created by a function from settings, one consumer group per role."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.types import TP, EventT
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind

from streamproc import telemetry
from streamproc.avro_codec import load_schemas
from streamproc.backfill.jobs import (
    apply_command,
    jobs_to_start,
    live_write_collections,
    now,
    retire,
)
from streamproc.backfill.replayer import JobStore, LiveLoad, ModelPool, Replayer
from streamproc.backfill.view import JobsView
from streamproc.chunking.split import Splitter
from streamproc.chunking.tokenizers import HFTokenCounter
from streamproc.errors import ConfigurationError, PermanentError, SchemaError
from streamproc.models import EmbeddingModel, load_model, resolve_source
from streamproc.naming import document_key
from streamproc.pipeline.chunker import Chunker
from streamproc.pipeline.embedder import Background, Embedder, Lane, Target
from streamproc.pipeline.ordered import InOrder
from streamproc.settings import Settings
from streamproc.weaviate_store import WeaviateStore

log = logging.getLogger(__name__)
tracer = telemetry.tracer

ROLES = ("chunker", "embedder")
DLQ_SUFFIX = ".dlq"
# Embed batches whose backfill-target writes and ack may still be running behind the stream.
MAX_UNFINISHED_BATCHES = 4


def _faust_app(settings: Settings, role: str) -> faust.App:
    worker = settings.worker
    app_id = f"{worker.app_id}-{role}"
    datadir = worker.data_dir / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap_servers.split(",")],
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        datadir=str(datadir),
        topic_partitions=6,
        topic_replication_factor=worker.internal_replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=worker.commit_interval_s,
        processing_guarantee="at_least_once",
        # Heartbeats run beside processing, so a short session only speeds up failover.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_recovery_delay=0.0,
    )


def _track_lag(app: faust.App, topic: str, group: str) -> None:
    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        for tp in app.consumer.assignment():
            if tp.topic != topic:
                continue
            position = await app.consumer.position(tp)
            highwater = app.consumer.highwater(tp)
            if position is not None and highwater is not None:
                lag = max(0, highwater - position)
                telemetry.consumer_lag[(tp.topic, tp.partition, group)] = lag


def dlq_headers(event: EventT, error: Exception) -> list[tuple[str, bytes]]:
    """The original headers plus why and where from; never the payload."""
    message = event.message
    reason = getattr(error, "reason", type(error).__name__)
    return [
        *(message.headers or []),
        ("streamproc.dlq.reason", str(reason).encode()),
        ("streamproc.dlq.error", str(error)[:2000].encode()),
        ("streamproc.dlq.topic", message.topic.encode()),
        ("streamproc.dlq.partition", str(message.partition).encode()),
        ("streamproc.dlq.offset", str(message.offset).encode()),
    ]


async def _send(
    app: faust.App,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
) -> Awaitable[Any]:
    return await app.producer.send(
        topic, key, value, partition=None, timestamp=None, headers=headers
    )


async def _dead_letter(app: faust.App, event: EventT, error: Exception) -> Awaitable[Any]:
    message = event.message
    reason = str(getattr(error, "reason", type(error).__name__))
    telemetry.record_error(trace.get_current_span(), error)
    telemetry.dlq_counter.add(1, {"reason": reason, "topic": message.topic})
    log.warning(
        "dead-lettered",
        extra={
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "reason": reason,
        },
    )
    return await _send(
        app, message.topic + DLQ_SUFFIX, message.key, message.value, dlq_headers(event, error)
    )


def token_counters(settings: Settings) -> list[HFTokenCounter]:
    """The tokenizer of every model in use, without loading the models' weights."""
    from transformers import AutoTokenizer

    counters = []
    for spec in settings.target_models:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                resolve_source(spec.source), revision=spec.revision
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot load the tokenizer of {spec.name!r}: {exc}") from exc
        counters.append(HFTokenCounter(spec.name, tokenizer, spec.max_seq_len))
    return counters


def splitter_for(settings: Settings, counters: list[HFTokenCounter] | None = None) -> Splitter:
    """The chunking settings' splitter over the tokenizers of every model in use."""
    return Splitter(
        counters if counters is not None else token_counters(settings),
        settings.chunking.max_tokens,
        settings.chunking.overlap_tokens,
    )


def create_chunker_app(settings: Settings, counters: list[HFTokenCounter]) -> faust.App:
    app = _faust_app(settings, "chunker")
    schemas = load_schemas(settings.schemas_dir)
    requested_codec = schemas.codec("ChunkRequested")
    record_codec = schemas.codec("ChunkRecord")
    embed_codec = schemas.codec("EmbedRequested")
    chunker = Chunker(settings.chunking, splitter_for(settings, counters))
    source = app.topic(
        settings.topic("chunk-requested"), key_serializer="raw", value_serializer="raw"
    )
    chunks_topic = settings.topic("chunks")
    embed_topic = settings.topic("embed-requested")
    # Chunk fingerprints per document key; co-partitioned with chunk-requested (same key).
    documents = app.Table("documents", default=None, key_type=str, value_type=str, partitions=6)
    pool = ThreadPoolExecutor(1, thread_name_prefix="chunk")

    group = f"{settings.worker.app_id}-chunker"
    _track_lag(app, source.get_topic_name(), group)

    @app.agent(source)
    async def chunk(stream: faust.Stream) -> None:
        async for event in stream.events():
            message = event.message
            with tracer.start_as_current_span(
                f"process {message.topic}",
                context=telemetry.extract(message.headers),
                kind=SpanKind.CONSUMER,
                attributes=telemetry.consume_attributes(
                    message.topic, message.partition, message.offset, group
                ),
            ) as span:
                await handle(event, span)

    async def handle(event: EventT, span: trace.Span) -> None:
        try:
            record = requested_codec.decode_any(event.value or b"")
        except SchemaError as exc:
            await (await _dead_letter(app, event, exc))
            return
        doc_key = document_key(record["tenant"], record["doc_id"])
        span.set_attributes(
            {"streamproc.tenant": record["tenant"], "streamproc.doc_id": record["doc_id"]}
        )
        if event.key != doc_key.encode():
            # The table only works if every event of a document lands on one partition.
            await (
                await _send(
                    app,
                    event.message.topic,
                    doc_key.encode(),
                    event.value,
                    list(event.message.headers or []),
                )
            )
            return
        previous = documents.get(doc_key)
        kafka_time = datetime.fromtimestamp(event.message.timestamp, tz=UTC)
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                pool,
                chunker.process,
                record,
                json.loads(previous) if previous else None,
                kafka_time,
            )
        except PermanentError as exc:
            await (await _dead_letter(app, event, exc))
            return
        futures = []
        # chunk_records and embed_requests are parallel: one span per chunk covers both sends.
        for (key, value), request in zip(out.chunk_records, out.embed_requests, strict=True):
            with tracer.start_as_current_span(
                f"send {embed_topic}",
                kind=SpanKind.PRODUCER,
                attributes=telemetry.publish_attributes(
                    embed_topic,
                    **{"streamproc.chunk_key": key, "streamproc.op": request["op"]},
                ),
            ):
                headers = telemetry.kafka_headers()
                futures.append(
                    await _send(
                        app,
                        chunks_topic,
                        key.encode(),
                        record_codec.encode(value) if value is not None else None,
                        headers,
                    )
                )
                futures.append(
                    await _send(
                        app, embed_topic, doc_key.encode(), embed_codec.encode(request), headers
                    )
                )
        # Confirmed downstream before the state moves on and the offset can commit.
        await asyncio.gather(*futures)
        if out.state is None:
            documents.pop(doc_key, None)
        else:
            documents[doc_key] = json.dumps(out.state)
        upserts = sum(r["op"] == "UPSERT" for r in out.embed_requests)
        span.set_attributes(
            {
                "streamproc.chunks.changed": upserts,
                "streamproc.chunks.deleted": len(out.embed_requests) - upserts,
                "streamproc.chunks.unchanged": out.unchanged,
            }
        )
        telemetry.count(
            {"unchanged": out.unchanged, "tombstoned": len(out.embed_requests) - upserts},
            role="chunker",
        )
        log.info(
            "chunked",
            extra={"doc": doc_key, "changed": len(out.embed_requests), "unchanged": out.unchanged},
        )

    return app


def prepare_targets(
    store: WeaviateStore, settings: Settings, models: list[EmbeddingModel]
) -> list[Target]:
    """Create each target collection (refusing a dimension mismatch) and the alias if missing."""
    targets = [Target(m, settings.collection_for(m.spec)) for m in models]
    for target in targets:
        store.ensure_collection(target.collection, target.model.dimension)
    active = settings.collection_for(settings.model(settings.active_model))
    alias = settings.weaviate.collection_prefix
    if any(t.collection == active for t in targets) and store.alias_target(alias) is None:
        store.point_alias(alias, active)
    return targets


def create_embedder_app(
    settings: Settings, embedder: Embedder, store: WeaviateStore, models: ModelPool
) -> faust.App:
    app = _faust_app(settings, "embedder")
    schemas = load_schemas(settings.schemas_dir)
    embed_codec = schemas.codec("EmbedRequested")
    done_codec = schemas.codec("EmbedDone")
    source = app.topic(
        settings.topic("embed-requested"), key_serializer="raw", value_serializer="raw"
    )
    done_topic = settings.topic("embed-done")
    view = JobsView(settings)
    live = LiveLoad(settings)
    _add_backfill(app, settings, embedder, store, models, view, live)
    unknown_models: set[str] = set()

    async def backfill_targets() -> list[Target]:
        """Every collection besides the configured ones that a backfill job has live traffic
        write."""
        targets = []
        configured = {t.collection for t in embedder.targets}
        for collection, name in live_write_collections((await view.refresh()).values()).items():
            if collection in configured:
                continue
            try:
                targets.append(Target(await models.get(name), collection))
            except ConfigurationError as exc:
                if name not in unknown_models:
                    unknown_models.add(name)
                    log.error(
                        "backfill target skipped",
                        extra={"collection": collection, "error": str(exc)},
                    )
        return targets

    group = f"{settings.worker.app_id}-embedder"
    _track_lag(app, source.get_topic_name(), group)

    @app.agent(source)
    async def embed(stream: faust.Stream) -> None:
        # A batch's backfill-target writes, DLQ sends and ack run behind the stream, so the
        # next batch's configured collections do not wait for them; acks stay in order.
        finishing = InOrder(MAX_UNFINISHED_BATCHES)
        try:
            async for events in stream.noack_take(
                settings.embedder.max_events, within=settings.embedder.max_wait_s
            ):
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
                try:
                    with trace.use_span(span):
                        await finishing.add(await handle(stream, events, span))
                except BaseException:
                    span.end()
                    raise
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
        requests, kept, futures = [], [], []
        for event in events:
            try:
                requests.append(embed_codec.decode(event.value or b""))
                kept.append(event)
            except SchemaError as exc:
                futures.append(await _dead_letter(app, event, exc))
        headers_of = {
            r["chunk_key"]: e.message.headers for r, e in zip(requests, kept, strict=True)
        }
        batch_link = [Link(span.get_span_context())]

        async def publish(records: list[dict[str, Any]]) -> None:
            # Counted before they are sent: a reader who sees a record sees it counted.
            telemetry.count(
                {
                    "embedded": sum(d["status"] == "EMBEDDED" for d in records),
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
                    futures.append(
                        await _send(
                            app,
                            done_topic,
                            document_key(done["tenant"], done["doc_id"]).encode(),
                            done_codec.encode(done),
                            telemetry.kafka_headers(),
                        )
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
            # Asked now, not when the batch came: a retired job's collection gets no more writes.
            extra = await backfill_targets()
            targets = [*embedder.targets, *extra]
            span.set_attributes(
                {
                    "streamproc.collections": ",".join(t.collection for t in targets),
                    "streamproc.model_versions": ",".join(
                        f"{t.model.spec.name}:{t.model.spec.version}" for t in targets
                    ),
                }
            )
            results = [result]
            if extra:
                results.append(await embedder.handle(requests, extra, lane=Lane.LIVE_BACKFILL))
                await publish(results[-1].done)
            # One dead letter per request; the configured collection's reason wins.
            failed = {i: reason for r in reversed(results) for i, reason in r.failed.items()}
            for index, reason in sorted(failed.items()):
                futures.append(
                    await _dead_letter(
                        app, kept[index], PermanentError(reason, reason="weaviate_rejected")
                    )
                )
            # Acked only after every send is confirmed.
            await asyncio.gather(*futures)
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


def _add_backfill(
    app: faust.App,
    settings: Settings,
    embedder: Embedder,
    store: WeaviateStore,
    models: ModelPool,
    view: JobsView,
    live: LiveLoad,
) -> None:
    """The job table, the agent applying backfill commands to it, and the supervisor that runs
    jobs, all in the embedder worker that owns the table's one partition."""
    command_codec = load_schemas(settings.schemas_dir).codec("BackfillCommand")
    commands = app.topic(
        settings.topic("backfill-commands"), key_serializer="raw", value_serializer="raw"
    )
    commands_tp = TP(commands.get_topic_name(), 0)
    # One partition: one worker owns every job, so a job never runs in two places.
    table = app.Table(
        "backfill_jobs",
        default=None,
        key_type=str,
        value_type=bytes,
        partitions=1,
        use_partitioner=True,
    )
    # Values are the Avro records themselves, so the CLI and other workers can read the
    # changelog. Set before the changelog topic is first built, which copies it.
    table.value_serializer = "raw"

    def owns() -> bool:
        return not app.rebalancing and commands_tp in app.assignor.assigned_actives()

    # Present from the start: a rate over a series that does not exist yet is "no data".
    telemetry.reembed_completed.add(0)
    telemetry.reembed_failed.add(0)
    jobs = JobStore(table, settings, owns)
    replayer = Replayer(settings, store, embedder, models, jobs, view, live)
    running: dict[str, asyncio.Task[None]] = {}
    telemetry.backfill_jobs.update(
        active=lambda: sum(not t.done() for t in running.values()),
        queued=lambda: sum(j["state"] == "PENDING" for j in jobs.all()) if owns() else 0,
    )

    @app.agent(commands)
    async def backfill_commands(stream: faust.Stream) -> None:
        async for event in stream.events():
            try:
                command = command_codec.decode(event.value or b"")
            except SchemaError as exc:
                await (await _dead_letter(app, event, exc))
                continue
            at = now()
            if command["op"] == "RETIRE":
                changed = retire(jobs.all(), command["target_collection"], at)
            else:
                job = apply_command(jobs.get(command["job_id"]), command, at)
                changed = [job] if job is not None else []
            for job in changed:
                jobs.put(job)
            log.info(
                "backfill command",
                extra={"op": command["op"], "job_id": command["job_id"], "changed": len(changed)},
            )

    @app.timer(interval=1.0)
    async def supervise_backfills() -> None:
        if app.in_recovery or not owns():
            for task in running.values():
                task.cancel()
            running.clear()
            return
        for job_id in [j for j, t in running.items() if t.done()]:
            running.pop(job_id)
        all_jobs = jobs.all()
        resumed = [j for j in all_jobs if j["state"] == "RUNNING" and j["job_id"] not in running]
        limit = settings.backfill.max_concurrent_jobs
        for job in resumed + jobs_to_start(all_jobs, len(running) + len(resumed), limit):
            running[job["job_id"]] = asyncio.ensure_future(replayer.run(job["job_id"]))

    @app.on_before_shutdown.connect
    async def stop_backfills(_app: faust.App, **_kwargs: Any) -> None:
        for task in running.values():
            task.cancel()
        await view.stop()


def background_pacing(settings: Settings) -> Background:
    return Background(settings.backfill.encode_slice_s, settings.backfill.idle_encode_slice_s)


def load_models(settings: Settings) -> list[EmbeddingModel]:
    try:
        return [load_model(spec, settings.embedder.device) for spec in settings.target_models]
    except ConfigurationError:
        raise
    except OSError as exc:
        raise ConfigurationError(f"cannot load a model: {exc}") from exc
