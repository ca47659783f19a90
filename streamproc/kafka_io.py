"""Kafka edge shared by the CLI and the tests: producers, and reading any topic as JSON."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streamproc.avro_codec import SINGLE_OBJECT_MAGIC, Schemas, load_schemas
from streamproc.errors import SchemaError, StreamprocError
from streamproc.settings import Settings


@asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    # acks=all and idempotence: an acknowledged event is on every in-sync replica, once.
    prod = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=settings.kafka.client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


def decode_value(schemas: Schemas, value: bytes | None) -> Any:
    """Best effort for humans: Avro by fingerprint, else JSON, else base64."""
    if value is None:
        return None
    if value[:2] == SINGLE_OBJECT_MAGIC:
        codec = schemas.by_fingerprint(value[2:10])
        if codec is not None:
            try:
                return codec.decode(value)
            except SchemaError as exc:
                return {"_undecodable": str(exc)}
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"_base64": base64.b64encode(value).decode()}


def record_as_json(schemas: Schemas, record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key.decode("utf-8", errors="replace") if record.key is not None else None,
        "headers": {k: v.decode("utf-8", errors="replace") for k, v in record.headers},
        "value": decode_value(schemas, record.value),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False)


async def tail_topic(
    settings: Settings,
    topic: str,
    from_beginning: bool,
    max_messages: int,
    idle_timeout: float,
    out: TextIO,
) -> int:
    schemas = load_schemas(settings.schemas_dir)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    seen = 0
    try:
        while max_messages == 0 or seen < max_messages:
            batch = await consumer.getmany(
                timeout_ms=int(idle_timeout * 1000) if idle_timeout else 1000
            )
            if not batch:
                if idle_timeout:
                    break
                continue
            for records in batch.values():
                for record in records:
                    if max_messages and seen >= max_messages:
                        break
                    out.write(dumps(record_as_json(schemas, record)) + "\n")
                    seen += 1
            out.flush()
    finally:
        await consumer.stop()
    return seen


async def read_to_end(
    settings: Settings, topic: str
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from offset 0 up to the high watermarks taken at the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # An assignment's first position is resolved in the background; with the default
        # ("latest") that can race the explicit seeks below and skip the whole topic.
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """The high watermark of every partition of `topic`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def follow(
    settings: Settings, start: dict[TopicPartition, int]
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Records from the `start` offsets on, one list per poll (empty when a second passed with
    nothing), so callers can check their own deadlines between polls."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            yield [record for records in batch.values() for record in records]
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise StreamprocError(f"topic {topic!r} does not exist")
    return partitions


async def live_chunks(settings: Settings) -> dict[str, bytes]:
    """The chunk topic's current state: the latest non-tombstone value of every chunk key."""
    live: dict[str, bytes] = {}
    async for record in read_to_end(settings, settings.topic("chunks")):
        key = record.key.decode() if record.key is not None else ""
        if record.value is None:
            live.pop(key, None)
        else:
            live[key] = record.value
    return live
