"""The Faust apps: created by a function from settings, one consumer group per role."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.types import TP, EventT
from faust.web import Request, Response, View
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind
from weaviate.exceptions import WeaviateBaseError

from streamproc import telemetry
from streamproc.avro_codec import load_schemas
from streamproc.backfill.jobs import (
    Job,
    apply_command,
    jobs_to_start,
    live_write_collections,
    live_write_scopes,
    now,
    retire,
    retired_collections,
)
from streamproc.backfill.live import ScopedTarget, write_targets
from streamproc.backfill.replayer import JobStore, LiveLoad, ModelPool, Replayer
from streamproc.backfill.view import JobsView
from streamproc.chunking.changes import DocumentState
from streamproc.chunking.split import Splitter
from streamproc.chunking.tokenizers import HFTokenCounter
from streamproc.delivery import Outbox, crash, guarded, is_transient, retry_transient
from streamproc.errors import (
    ConfigurationError,
    PermanentError,
    SchemaError,
    SkippedRecordsError,
    StaleEventError,
)
from streamproc.failpoints import fail_point
from streamproc.health import Health
from streamproc.kafka_io import faust_credentials, records_between
from streamproc.models import EmbeddingModel, load_model, resolve_source
from streamproc.naming import document_key
from streamproc.pipeline.chunker import Chunker, ChunkerOutput
from streamproc.pipeline.embedder import Background, Embedder, Target
from streamproc.pipeline.offsets import HandedOffsets
from streamproc.pipeline.ordered import InOrder
from streamproc.settings import Settings
from streamproc.weaviate_store import WeaviateStore

log = logging.getLogger(__name__)
tracer = telemetry.tracer

ROLES = ("chunker", "embedder")
DLQ_SUFFIX = ".dlq"
# Embed batches whose backfill-target writes and ack may still be running behind the stream.
MAX_UNFINISHED_BATCHES = 4
# An ingest event's headers carry trace context and a few ids; more is not an ingest event, and
# copied onto the record's chunks or dead letter it could push them over Kafka's size limit.
MAX_HEADER_BYTES = 64 * 1024


def _faust_app(settings: Settings, role: str) -> faust.App:
    worker = settings.worker
    app_id = f"{worker.app_id}-{role}"
    datadir = worker.data_dir / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
        store="memory://",
        autodiscover=False,
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
        # Faust would wait for every unacked event before a rebalance or a stop goes on:
        # forever while Weaviate is down, until the group evicts this member and another one
        # writes beside it. `_watch` bounds that wait instead.
        stream_wait_empty=False,
        web_enabled=worker.health_port is not None,
        web_port=worker.health_port or 6066,
        web_bind=worker.health_host,
        consumer_group_instance_id=worker.group_instance_id,
    )


def _watch(app: faust.App, settings: Settings, topic: str, group: str) -> Health:
    """The worker's health: work in flight, stalled partitions and lag, a rebalance guard, the
    oldest-work gauge and, when `health_port` is set, `/healthz` and `/readyz`."""
    health = Health(settings.worker.stall_threshold_s)
    grace = settings.worker.rebalance_grace_s
    telemetry.oldest_work[group] = health.oldest_work_s

    # Work in flight gets `rebalance_grace_s` to finish when partitions are revoked or the
    # worker stops. A rebalance cannot complete before this member rejoins, so nobody else
    # processes these partitions meanwhile; work still unfinished then ends the process, which
    # leaves its offsets uncommitted and can write nothing more.
    @app.on_partitions_revoked.connect
    async def finish_before_revoke(_app: faust.App, revoked: Any, **_kwargs: Any) -> None:
        if not await health.inflight.drained(grace):
            crash("rebalance", TimeoutError(f"work still in flight after {grace}s"))

    @app.on_before_shutdown.connect
    async def finish_before_stop(_app: faust.App, **_kwargs: Any) -> None:
        # Unfinished work is cancelled unacked after this: delivered again on restart.
        await health.inflight.drained(grace)

    @app.timer(interval=5.0)
    async def measure_lag() -> None:
        now = time.monotonic()
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == topic]
        health.stalls.forget_others(assigned)
        for tp in assigned:
            position = await app.consumer.position(tp)
            highwater = app.consumer.highwater(tp)
            if position is not None and highwater is not None:
                telemetry.consumer_lag[(tp.topic, tp.partition, group)] = max(
                    0, highwater - position
                )
                health.stalls.observe(tp, position, highwater, now)

    if settings.worker.health_port is not None:

        @app.page("/healthz")
        async def healthz(view: View, _request: Request) -> Response:
            verdict = health.verdict()
            return view.json(
                {
                    "healthy": verdict.healthy,
                    "oldest_work_s": round(verdict.oldest_work_s, 3),
                    "retrying": verdict.retrying,
                    "threshold_s": health.threshold_s,
                },
                status=200 if verdict.healthy else 503,
            )

        @app.page("/readyz")
        async def readyz(view: View, _request: Request) -> Response:
            ready = not app.in_recovery and app.consumer is not None
            return view.json({"ready": ready}, status=200 if ready else 503)

    return health


def _handed_check(settings: Settings, group: str) -> Callable[[Iterable[EventT]], Awaitable[None]]:
    """Checks the events an agent is handed, in the order it was handed them, against the
    offsets before them (see pipeline/offsets.py). A record the consumer stepped over ends the
    process before anything after it is acked, so the next start reads it again."""
    handed = HandedOffsets()

    async def check(events: Iterable[EventT]) -> None:
        ranges: dict[TopicPartition, tuple[int | None, int]] = {}
        offsets: dict[TopicPartition, set[int]] = {}
        for event in events:
            m = event.message
            tp = TopicPartition(m.topic, m.partition)
            offsets.setdefault(tp, set()).add(m.offset)
            jump = handed.hand(m.topic, m.partition, m.generation_id, m.offset)
            if jump is not None:
                # Two jumps of one partition in one batch: one range over both, less what
                # was handed over in between.
                ranges[tp] = (
                    (ranges[tp][0], max(ranges[tp][1], jump.end))
                    if tp in ranges
                    else (jump.start, jump.end)
                )
        if not ranges:
            return
        if stepped := {
            f"{tp.topic}[{tp.partition}]": r for tp, r in ranges.items() if r[0] is not None
        }:
            # Legitimate after compaction or transaction markers only; anything else is a
            # consumer bug this check exists for.
            log.warning("offsets jumped", extra={"ranges": stepped})
        found = await retry_transient(
            "offset check", lambda: records_between(settings, group, ranges)
        )
        skipped = {
            f"{tp.topic}[{tp.partition}]": missed
            for tp, records in found.items()
            if (missed := sorted(set(records) - offsets[tp]))
        }
        if skipped:
            log.error(
                "the consumer stepped over records",
                extra={"skipped": {tp: [o[0], o[-1], len(o)] for tp, o in skipped.items()}},
            )
            crash("consumer", SkippedRecordsError(f"records stepped over: {skipped}"))

    return check


def headers_size(headers: Iterable[tuple[str, bytes]] | None) -> int:
    return sum(len(k) + len(v or b"") for k, v in headers or [])


def dlq_headers(event: EventT, error: Exception) -> list[tuple[str, bytes]]:
    """The original headers plus why and where from; never the payload. Headers over the
    limit are left out (their size is noted), or the dead letter itself could not be sent."""
    message = event.message
    reason = getattr(error, "reason", type(error).__name__)
    size = headers_size(message.headers)
    original = (
        list(message.headers or [])
        if size <= MAX_HEADER_BYTES
        else [("streamproc.dlq.headers_dropped", str(size).encode())]
    )
    return [
        *original,
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


def _outbox(app: faust.App) -> Outbox:
    return Outbox(lambda *args: _send(app, *args))


async def _dead_letter(outbox: Outbox, event: EventT, error: Exception) -> None:
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
    await outbox.send(
        message.topic + DLQ_SUFFIX, message.key, message.value, dlq_headers(event, error)
    )


def _unexpected(error: Exception, reason: str) -> PermanentError:
    """A dead letter for an error no rule foresaw: its type and where it was raised, never its
    message, which may quote the input."""
    frame = traceback.extract_tb(error.__traceback__)[-1:]
    where = f" at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else ""
    return PermanentError(f"{type(error).__name__}{where}", reason=reason)


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
    chunker = Chunker(settings.chunking, splitter_for(settings, counters), settings.sources)
    source = app.topic(
        settings.topic("chunk-requested"), key_serializer="raw", value_serializer="raw"
    )
    chunks_topic = settings.topic("chunks")
    embed_topic = settings.topic("embed-requested")
    # Chunk fingerprints per document key; co-partitioned with chunk-requested (same key).
    documents = app.Table("documents", default=None, key_type=str, value_type=str, partitions=6)
    pool = ThreadPoolExecutor(1, thread_name_prefix="chunk")

    group = f"{settings.worker.app_id}-chunker"
    inflight = _watch(app, settings, source.get_topic_name(), group).inflight
    check_handed = _handed_check(settings, group)

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
                token = inflight.enter()
                try:
                    await check_handed((event,))
                    await handle(event, span)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    # Faust would ack this event when it restarts the agent.
                    crash("chunker", exc)
                finally:
                    inflight.leave(token)

    async def handle(event: EventT, span: trace.Span) -> None:
        outbox = _outbox(app)
        if (size := headers_size(event.message.headers)) > MAX_HEADER_BYTES:
            too_large = PermanentError(
                f"headers hold {size} bytes, over the {MAX_HEADER_BYTES}-byte limit",
                reason="headers_too_large",
            )
            await _dead_letter(outbox, event, too_large)
            await outbox.confirm()
            return
        try:
            record = requested_codec.decode_any(event.value or b"")
        except Exception as exc:
            error = exc if isinstance(exc, SchemaError) else _unexpected(exc, "undecodable")
            await _dead_letter(outbox, event, error)
            await outbox.confirm()
            return
        doc_key = document_key(record["tenant"], record["doc_id"])
        span.set_attributes(
            {"streamproc.tenant": record["tenant"], "streamproc.doc_id": record["doc_id"]}
        )
        if event.key != doc_key.encode():
            # The table only works if every event of a document lands on one partition.
            await outbox.send(
                event.message.topic,
                doc_key.encode(),
                event.value,
                list(event.message.headers or []),
            )
            await outbox.confirm()
            return
        previous = documents.get(doc_key)
        kafka_time = datetime.fromtimestamp(event.message.timestamp, tz=UTC)

        async def process() -> ChunkerOutput:
            return await asyncio.get_running_loop().run_in_executor(
                pool,
                chunker.process,
                record,
                DocumentState.from_json(previous) if previous else None,
                kafka_time,
            )

        try:
            # A URI that is down for a moment is read again here; the partition waits.
            out = await retry_transient("chunking", process)
        except StaleEventError:
            telemetry.count({"stale": 1}, role="chunker")
            log.info("stale event skipped", extra={"doc": doc_key, "offset": event.message.offset})
            return
        except PermanentError as exc:
            await _dead_letter(outbox, event, exc)
            await outbox.confirm()
            return
        except Exception as exc:
            # Pure code over one document: whatever else it raises is about this input.
            await _dead_letter(outbox, event, _unexpected(exc, "chunker_error"))
            await outbox.confirm()
            return
        records = dict(out.chunk_records)
        for request in out.embed_requests:
            key = request["chunk_key"]
            with tracer.start_as_current_span(
                f"send {embed_topic}",
                kind=SpanKind.PRODUCER,
                attributes=telemetry.publish_attributes(
                    embed_topic, **{"streamproc.chunk_key": key, "streamproc.op": request["op"]}
                ),
            ):
                headers = telemetry.kafka_headers()
                # Unchanged chunks are on the chunk topic already.
                if key in records:
                    value = records[key]
                    await outbox.send(
                        chunks_topic,
                        key.encode(),
                        record_codec.encode(value) if value is not None else None,
                        headers,
                    )
                await outbox.send(
                    embed_topic, doc_key.encode(), embed_codec.encode(request), headers
                )
        # Confirmed downstream before the state moves on and the offset can commit.
        await outbox.confirm()
        documents[doc_key] = out.state.to_json()
        upserts = sum(r["op"] == "UPSERT" and not r["if_changed"] for r in out.embed_requests)
        deletes = sum(r["op"] == "DELETE" for r in out.embed_requests)
        span.set_attributes(
            {
                "streamproc.chunks.changed": upserts,
                "streamproc.chunks.deleted": deletes,
                "streamproc.chunks.unchanged": out.unchanged,
            }
        )
        telemetry.count({"unchanged": out.unchanged, "tombstoned": deletes}, role="chunker")
        log.info(
            "chunked",
            extra={
                "doc": doc_key,
                "changed": upserts,
                "deleted": deletes,
                "unchanged": out.unchanged,
            },
        )

    return app


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
    inflight = _watch(app, settings, source.get_topic_name(), group).inflight
    check_handed = _handed_check(settings, group)

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
        outbox = _outbox(app)
        requests, kept = [], []
        for event in events:
            try:
                requests.append(embed_codec.decode(event.value or b""))
                kept.append(event)
            except Exception as exc:
                error = exc if isinstance(exc, SchemaError) else _unexpected(exc, "undecodable")
                await _dead_letter(outbox, event, error)
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
                await _dead_letter(
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

    check_handed = _handed_check(settings, f"{settings.worker.app_id}-embedder")

    @app.agent(commands)
    async def backfill_commands(stream: faust.Stream) -> None:
        async for event in stream.events():
            try:
                await check_handed((event,))
                await apply(event)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                crash("backfill commands", exc)

    async def apply(event: EventT) -> None:
        try:
            command = command_codec.decode(event.value or b"")
        except SchemaError as exc:
            outbox = _outbox(app)
            await _dead_letter(outbox, event, exc)
            await outbox.confirm()
            return
        if command["acked_by"] is not None:
            return  # an embedder's acknowledgement of a retire: for the `retire` command
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
        all_jobs = jobs.all()
        retired = {j["job_id"] for j in all_jobs if j["retired"]}
        for job_id, task in running.items():
            # Its collection is about to be dropped: a replay hung on it never holds it up.
            if job_id in retired:
                task.cancel()
        for job_id in [j for j, t in running.items() if t.done()]:
            running.pop(job_id)
        resumed = [j for j in all_jobs if j["state"] == "RUNNING" and j["job_id"] not in running]
        limit = settings.backfill.max_concurrent_jobs
        for job in resumed + jobs_to_start(all_jobs, len(running) + len(resumed), limit):
            running[job["job_id"]] = asyncio.ensure_future(replayer.run(job["job_id"]))

    # Collection -> (member id, retired job ids) this worker acknowledged.
    acked: dict[str, tuple[str, frozenset[str]]] = {}

    @app.timer(interval=1.0)
    async def acknowledge_retires() -> None:
        """Once this worker's view says a collection is retired and none of its tasks may
        still write it, say so on `backfill-commands`: `collections retire` drops it only
        when every member of the embedder group has."""
        member = _member_id(app)
        if member is None:
            return  # not in the group: `retire` waits for members only
        try:
            await acknowledge(member)
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, WeaviateBaseError)):
                raise
            # Kafka or Weaviate away for a moment: the next tick tries again.
            log.warning("retire acknowledgement postponed", extra={"exc_type": type(exc).__name__})

    async def acknowledge(member: str) -> None:
        for collection, job_ids in retired_collections((await view.refresh()).values()).items():
            if acked.get(collection) == (member, job_ids) or view.writers.busy(collection):
                continue
            # A dropped collection needs no acknowledgement (a new member id would otherwise
            # acknowledge every collection ever retired again).
            if not await asyncio.to_thread(store.client.collections.exists, collection):
                acked[collection] = (member, job_ids)
                continue
            ack = {
                "op": "RETIRE",
                "job_id": "",
                "target_collection": collection,
                "acked_by": member,
                "acked_jobs": sorted(job_ids),
                "requested_at": now(),
            }
            outbox = _outbox(app)
            key = f"{collection}/{member}".encode()
            await outbox.send(commands.get_topic_name(), key, command_codec.encode(ack))
            await outbox.confirm()
            acked[collection] = (member, job_ids)
            log.info("retire acknowledged", extra={"collection": collection, "member": member})

    @app.on_before_shutdown.connect
    async def stop_backfills(_app: faust.App, **_kwargs: Any) -> None:
        for task in running.values():
            task.cancel()
        await view.stop()


def _member_id(app: faust.App) -> str | None:
    """This worker's member id in the embedder group, as `describe_consumer_groups` lists it
    (None until it has joined). Faust does not expose it; its aiokafka consumer does."""
    thread = getattr(app.consumer, "_thread", None)
    coordinator = getattr(getattr(thread, "_consumer", None), "_coordinator", None)
    member = getattr(coordinator, "member_id", None)
    return str(member) if member else None


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
