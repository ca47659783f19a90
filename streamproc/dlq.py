"""Replaying a dead-letter topic into the topic its messages came from."""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import TopicPartition

from streamproc.kafka_io import consumer_client, producer
from streamproc.settings import Settings

DLQ_HEADER_PREFIX = "streamproc.dlq."


async def replay(
    settings: Settings, topic: str, until: Mapping[TopicPartition, int] | None = None
) -> int:
    """Re-send what the DLQ holds beyond the replay group's committed offsets, up to `until`
    (each partition's end offset; by default the ends when the replay starts), then commit.

    The original bytes and headers go back as they came; our reason headers are dropped.
    """
    source = settings.topic(topic)
    dlq = f"{source}.dlq"
    consumer = consumer_client(
        settings,
        group_id=f"{settings.worker.app_id}-dlq-replay",
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
