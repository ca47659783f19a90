"""Avro through a real topic: binary single-object encoding and JSON, read back equal."""

from __future__ import annotations

import asyncio
import json

from streamproc.avro_codec import load_schemas
from streamproc.kafka_io import consumer_client, producer
from streamproc.settings import Settings
from streamproc.topics import topic_name


async def _round_trip(settings: Settings) -> list[dict[str, object]]:
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    topic = topic_name(settings, "chunk-requested")
    event = {"event_id": "e-1", "tenant": "acme", "doc_id": "guide", "content": "# Guide\n\nText."}
    async with producer(settings) as prod:
        await prod.send_and_wait(
            topic,
            codec.encode(codec.decode_json(json.dumps(event))),
            key=b"acme/guide",
            partition=0,
        )
        await prod.send_and_wait(topic, json.dumps(event).encode(), key=b"acme/guide", partition=0)
    consumer = consumer_client(
        settings,
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 2:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "no record came back from Kafka within 10 s"
            records += [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    assert records[0].value[:2] == b"\xc3\x01"
    assert records[1].value[:1] == b"{"
    return [codec.decode_any(r.value) for r in records]


def test_binary_and_json_round_trip_through_kafka(topics: Settings) -> None:
    binary, from_json = asyncio.run(_round_trip(topics))
    assert binary == from_json
    assert binary["doc_id"] == "guide" and binary["op"] == "UPSERT"
