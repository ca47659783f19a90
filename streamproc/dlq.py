"""Dead-letter topics: what a dead letter carries, sending one, and replaying a DLQ into the
topic its messages came from."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition
from faust.types import EventT
from opentelemetry import trace

from streamproc import telemetry
from streamproc.delivery import Outbox
from streamproc.errors import PermanentError
from streamproc.kafka_io import consumer_client, producer
from streamproc.settings import Settings
from streamproc.topics import dead_letter_topic, group_id, topic_name

DLQ_HEADER_PREFIX = "streamproc.dlq."
# An ingest event's headers carry trace context and a few ids; more is not an ingest event, and
# copied onto the record's chunks or dead letter it could push them over Kafka's size limit.
MAX_HEADER_BYTES = 64 * 1024

log = logging.getLogger(__name__)


async def replay(
    settings: Settings, topic: str, until: Mapping[TopicPartition, int] | None = None
) -> int:
    """Re-send what the DLQ holds beyond the replay group's committed offsets, up to `until`
    (each partition's end offset; by default the ends when the replay starts), then commit.

    The original bytes and headers go back as they came; our reason headers are dropped.
    """
    source = topic_name(settings, topic)
    dlq = dead_letter_topic(source)
    consumer = consumer_client(
        settings,
        group_id=group_id(settings, "dlq-replay"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    sent = 0
    try:
        tps = [TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or [])]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or [])]
        consumer.assign(tps)
        ends = dict(until) if until is not None else await consumer.end_offsets(tps)
        async with producer(settings) as prod:
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    futures = []
                    last = None
                    for record in batch.get(tp, []):
                        if record.offset >= ends[tp]:
                            break
                        headers = [
                            (k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)
                        ]
                        futures.append(
                            # The original timestamp: it is the version of an event without
                            # ingested_at, and a replay must not make it look newer.
                            await prod.send(
                                source,
                                record.value,
                                key=record.key,
                                headers=headers,
                                timestamp_ms=record.timestamp,
                            )
                        )
                        last = record.offset
                    for future in futures:
                        await future
                    sent += len(futures)
                    # Not the fetched position: a fetch may reach past the end, and what lies
                    # there (dead letters that arrived meanwhile) is the next replay's.
                    if last is not None:
                        await consumer.commit({tp: last + 1})
    finally:
        await consumer.stop()
    return sent


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
        else [(DLQ_HEADER_PREFIX + "headers_dropped", str(size).encode())]
    )
    return [
        *original,
        (DLQ_HEADER_PREFIX + "reason", str(reason).encode()),
        (DLQ_HEADER_PREFIX + "error", str(error)[:2000].encode()),
        (DLQ_HEADER_PREFIX + "topic", message.topic.encode()),
        (DLQ_HEADER_PREFIX + "partition", str(message.partition).encode()),
        (DLQ_HEADER_PREFIX + "offset", str(message.offset).encode()),
    ]


async def dead_letter(outbox: Outbox, event: EventT, error: Exception) -> None:
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
        dead_letter_topic(message.topic), message.key, message.value, dlq_headers(event, error)
    )


def unexpected(error: Exception, reason: str) -> PermanentError:
    """A dead letter for an error no rule foresaw: its type and where it was raised, never its
    message, which may quote the input."""
    frame = traceback.extract_tb(error.__traceback__)[-1:]
    where = f" at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else ""
    return PermanentError(f"{type(error).__name__}{where}", reason=reason)
