"""Replaying a dead-letter topic into the topic its messages came from."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc.kafka_io import producer
from streamproc.settings import Settings

DLQ_HEADER_PREFIX = "streamproc.dlq."


async def replay(settings: Settings, topic: str) -> int:
    """Re-send what the DLQ holds beyond the replay group's committed offsets, then commit.

    The original bytes and headers go back as they came; our reason headers are dropped.
    """
    source = settings.topic(topic)
    dlq = f"{source}.dlq"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
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
        ends = await consumer.end_offsets(tps)
        async with producer(settings) as prod:
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    futures = []
                    for record in batch.get(tp, []):
                        if record.offset >= ends[tp]:
                            break
                        headers = [
                            (k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)
                        ]
                        futures.append(
                            await prod.send(source, record.value, key=record.key, headers=headers)
                        )
                    for future in futures:
                        await future
                    sent += len(futures)
                    await consumer.commit()
    finally:
        await consumer.stop()
    return sent
