"""Reading the compacted chunk topic for a replay: the Kafka clients a replay holds, and the
records of one partition's offset range."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streamproc.kafka_io import admin_client, consumer_client
from streamproc.settings import Settings


@dataclass
class Clients:
    reader: AIOKafkaConsumer  # assigned the chunk partitions, scanning them
    # Never assigned: an offset query sent on the reader's connection waits behind its
    # long-poll fetch (fetch_max_wait_ms), which cost the replay half a second per batch.
    offsets: AIOKafkaConsumer
    admin: AIOKafkaAdminClient


@asynccontextmanager
async def replay_clients(settings: Settings) -> AsyncIterator[Clients]:
    kafka = Clients(
        # Reads up to known end offsets only: a long poll would just delay the next scan.
        reader=consumer_client(
            settings,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        ),
        offsets=consumer_client(settings, enable_auto_commit=False),
        admin=admin_client(settings),
    )
    await kafka.reader.start()
    await kafka.offsets.start()
    await kafka.admin.start()
    try:
        yield kafka
    finally:
        await kafka.reader.stop()
        await kafka.offsets.stop()
        await kafka.admin.close()


async def scan(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Records of `tp` with offsets in [start, end), in order."""
    if start >= end:
        return
    consumer.seek(tp, start)
    consumer.resume(tp)
    try:
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    return
                yield record
    finally:
        consumer.pause(tp)


def by_partition(offsets: Mapping[TopicPartition, int]) -> dict[str, int]:
    return {str(tp.partition): offset for tp, offset in offsets.items()}


def record_time(record: ConsumerRecord[bytes, bytes]) -> datetime:
    return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
