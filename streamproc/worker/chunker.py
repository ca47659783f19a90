"""The chunker agent: ingest-complete events to chunk records and embed requests."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import faust
from faust.types import EventT
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from streamproc import telemetry
from streamproc.chunking.changes import DocumentState
from streamproc.chunking.tokenizers import HFTokenCounter, splitter_for
from streamproc.delivery import crash, retry_transient
from streamproc.dlq import MAX_HEADER_BYTES, dead_letter, headers_size, unexpected
from streamproc.errors import PermanentError, SchemaError, StaleEventError
from streamproc.naming import document_key
from streamproc.pipeline.chunker import Chunker, ChunkerOutput
from streamproc.settings import Settings
from streamproc.topics import group_id, topics_for
from streamproc.worker.app import faust_app, handed_check, outbox_for, watch

log = logging.getLogger(__name__)
tracer = telemetry.tracer


def create_chunker_app(settings: Settings, counters: list[HFTokenCounter]) -> faust.App:
    app = faust_app(settings, "chunker")
    topics = topics_for(settings)
    chunker = Chunker(settings.chunking, splitter_for(settings, counters), settings.sources)
    source = app.topic(topics.chunk_requested.name, key_serializer="raw", value_serializer="raw")
    chunks_topic = topics.chunks.name
    embed_topic = topics.embed_requested.name
    # Chunk fingerprints per document key; co-partitioned with chunk-requested (same key).
    documents = app.Table(
        "documents",
        default=None,
        key_type=str,
        value_type=str,
        partitions=topics.chunk_requested.partitions,
    )
    pool = ThreadPoolExecutor(1, thread_name_prefix="chunk")

    group = group_id(settings, "chunker")
    inflight = watch(app, settings, source.get_topic_name(), group).inflight
    check_handed = handed_check(settings, group)

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
        outbox = outbox_for(app)
        if (size := headers_size(event.message.headers)) > MAX_HEADER_BYTES:
            too_large = PermanentError(
                f"headers hold {size} bytes, over the {MAX_HEADER_BYTES}-byte limit",
                reason="headers_too_large",
            )
            await dead_letter(outbox, event, too_large)
            await outbox.confirm()
            return
        try:
            record = topics.chunk_requested.codec.decode_any(event.value or b"")
        except Exception as exc:
            error = exc if isinstance(exc, SchemaError) else unexpected(exc, "undecodable")
            await dead_letter(outbox, event, error)
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
            await dead_letter(outbox, event, exc)
            await outbox.confirm()
            return
        except Exception as exc:
            # Pure code over one document: whatever else it raises is about this input.
            await dead_letter(outbox, event, unexpected(exc, "chunker_error"))
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
                        topics.chunks.encode(value) if value is not None else None,
                        headers,
                    )
                await outbox.send(
                    embed_topic, doc_key.encode(), topics.embed_requested.encode(request), headers
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
