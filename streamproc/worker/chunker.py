"""The chunker agent: ingest-complete events to chunk records and embed requests."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust
from faust.types import EventT
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from streamproc import telemetry
from streamproc.chunking.changes import DocumentState
from streamproc.chunking.tokenizers import HFTokenCounter, splitter_for
from streamproc.delivery import Outbox, crash, retry_transient
from streamproc.dlq import MAX_HEADER_BYTES, dead_letter, headers_size, unexpected
from streamproc.errors import PermanentError, SchemaError, StaleEventError
from streamproc.naming import document_key
from streamproc.pipeline.chunker import Chunker, ChunkerOutput
from streamproc.settings import Settings
from streamproc.topics import topics_for
from streamproc.worker.app import AgentContext, agent_context, faust_app, outbox_for

log = logging.getLogger(__name__)
tracer = telemetry.tracer


def create_chunker_app(settings: Settings, counters: list[HFTokenCounter]) -> faust.App:
    app = faust_app(settings, "chunker")
    topics = topics_for(settings)
    source = app.topic(topics.chunk_requested.name, key_serializer="raw", value_serializer="raw")
    # Chunk fingerprints per document key; co-partitioned with chunk-requested (same key).
    documents = app.Table(
        "documents",
        default=None,
        key_type=str,
        value_type=str,
        partitions=topics.chunk_requested.partitions,
    )
    agent = ChunkAgent(
        agent_context(app, settings, "chunker", source.get_topic_name()),
        Chunker(settings.chunking, splitter_for(settings, counters), settings.sources),
        documents,
    )
    app.agent(source, name="chunk")(agent.run)
    return app


class ChunkAgent:
    """One ingest-complete event at a time: its chunk records and embed requests sent and
    confirmed, then the document's state, then the ack. A bad event is dead-lettered."""

    def __init__(self, context: AgentContext, chunker: Chunker, documents: Any) -> None:
        self.context = context
        self.topics = context.topics
        self.chunker = chunker
        self.documents = documents
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="chunk")

    async def run(self, stream: faust.Stream) -> None:
        async for event in stream.events():
            message = event.message
            with tracer.start_as_current_span(
                f"process {message.topic}",
                context=telemetry.extract(message.headers),
                kind=SpanKind.CONSUMER,
                attributes=telemetry.consume_attributes(
                    message.topic, message.partition, message.offset, self.context.group
                ),
            ) as span:
                token = self.context.inflight.enter()
                try:
                    await self.context.check_handed((event,))
                    await self._handle(event, span)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    # Faust would ack this event when it restarts the agent.
                    crash("chunker", exc)
                finally:
                    self.context.inflight.leave(token)

    async def _handle(self, event: EventT, span: trace.Span) -> None:
        outbox = outbox_for(self.context.app)
        if (size := headers_size(event.message.headers)) > MAX_HEADER_BYTES:
            too_large = PermanentError(
                f"headers hold {size} bytes, over the {MAX_HEADER_BYTES}-byte limit",
                reason="headers_too_large",
            )
            return await _rejected(outbox, event, too_large)
        try:
            record = self.topics.chunk_requested.codec.decode_any(event.value or b"")
        except Exception as exc:
            error = exc if isinstance(exc, SchemaError) else unexpected(exc, "undecodable")
            return await _rejected(outbox, event, error)
        doc_key = document_key(record["tenant"], record["doc_id"])
        span.set_attributes(
            {"streamproc.tenant": record["tenant"], "streamproc.doc_id": record["doc_id"]}
        )
        if event.key != doc_key.encode():
            # The table only works if every event of a document lands on one partition.
            headers = list(event.message.headers or [])
            await outbox.send(event.message.topic, doc_key.encode(), event.value, headers)
            return await outbox.confirm()
        try:
            # A URI that is down for a moment is read again here; the partition waits.
            out = await retry_transient("chunking", partial(self._chunk, event, record, doc_key))
        except StaleEventError:
            telemetry.count({"stale": 1}, role="chunker")
            log.info("stale event skipped", extra={"doc": doc_key, "offset": event.message.offset})
            return None
        except PermanentError as exc:
            return await _rejected(outbox, event, exc)
        except Exception as exc:
            # Pure code over one document: whatever else it raises is about this input.
            return await _rejected(outbox, event, unexpected(exc, "chunker_error"))
        await self._send(outbox, doc_key, out)
        # Confirmed downstream before the state moves on and the offset can commit.
        await outbox.confirm()
        self.documents[doc_key] = out.state.to_json()
        _report(span, doc_key, out)
        return None

    async def _chunk(self, event: EventT, record: dict[str, Any], doc_key: str) -> ChunkerOutput:
        previous = self.documents.get(doc_key)
        return await asyncio.get_running_loop().run_in_executor(
            self.pool,
            self.chunker.process,
            record,
            DocumentState.from_json(previous) if previous else None,
            datetime.fromtimestamp(event.message.timestamp, tz=UTC),
        )

    async def _send(self, outbox: Outbox, doc_key: str, out: ChunkerOutput) -> None:
        chunks, embed = self.topics.chunks, self.topics.embed_requested
        records = dict(out.chunk_records)
        for request in out.embed_requests:
            key = request["chunk_key"]
            with tracer.start_as_current_span(
                f"send {embed.name}",
                kind=SpanKind.PRODUCER,
                attributes=telemetry.publish_attributes(
                    embed.name, **{"streamproc.chunk_key": key, "streamproc.op": request["op"]}
                ),
            ):
                headers = telemetry.kafka_headers()
                # Unchanged chunks are on the chunk topic already.
                if key in records:
                    value = records[key]
                    encoded = chunks.encode(value) if value is not None else None
                    await outbox.send(chunks.name, key.encode(), encoded, headers)
                await outbox.send(embed.name, doc_key.encode(), embed.encode(request), headers)


async def _rejected(outbox: Outbox, event: EventT, error: Exception) -> None:
    await dead_letter(outbox, event, error)
    await outbox.confirm()


def _report(span: trace.Span, doc_key: str, out: ChunkerOutput) -> None:
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
        extra={"doc": doc_key, "changed": upserts, "deleted": deletes, "unchanged": out.unchanged},
    )
