"""`streamproc demo`: the main job end to end on the configured services."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from aiokafka import AIOKafkaConsumer

from streamproc.avro_codec import load_schemas
from streamproc.kafka_io import producer
from streamproc.localservices.manager import LocalServices
from streamproc.models import load_model
from streamproc.naming import collection_name, object_uuid
from streamproc.settings import Settings
from streamproc.topology import load_topology
from streamproc.topology.kafka_admin import reconcile
from streamproc.weaviate_store import CONTENT_VECTOR, ChunkObject, WeaviateStore, connect


@contextmanager
def local_services(settings: Settings, manage: bool) -> Iterator[None]:
    """Start the local services when asked, and stop at the end only what this run started."""
    if not manage:
        yield
        return
    services = LocalServices(settings)
    already = all(s.pid and s.ready for s in services.status())
    for line in services.up():
        typer.echo(f"services: {line}")
    try:
        yield
    finally:
        if not already:
            for line in services.down():
                typer.echo(f"services: {line}")


def run_demo(settings: Settings, manage_services: bool = True) -> None:
    with local_services(settings, manage_services):
        specs = load_topology(settings.topology_file, prefix=settings.kafka.topic_prefix)
        report = asyncio.run(reconcile(settings.kafka.bootstrap_servers, specs, apply=True))
        typer.echo(f"topology: {len(report.changes)} change(s) applied, {len(specs)} topics")
        event = asyncio.run(_event_round_trip(settings))
        typer.echo(f"kafka: produced and read back event {event['event_id']} ({event['doc_id']})")
        _index_and_search(settings, event)


async def _event_round_trip(settings: Settings) -> dict[str, object]:
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")
    topic = settings.topic("chunk-requested")
    event = codec.decode_json(
        json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "tenant": "demo",
                "doc_id": "hello",
                "content": "Kafka carries events; Weaviate answers vector queries.",
            }
        )
    )
    async with producer(settings) as prod:
        meta = await prod.send_and_wait(topic, codec.encode(event), key=b"demo/hello")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    decoded = codec.decode(record.value)
    assert decoded == event, "the event read back differs from the one produced"
    return decoded


def _index_and_search(settings: Settings, event: dict[str, object]) -> None:
    spec = settings.model(settings.active_model)
    model = load_model(spec)
    text = str(event["content"])
    vector = model.encode([text])[0]
    name = collection_name(settings.weaviate.collection_prefix, spec.name, spec.version)
    alias = settings.weaviate.collection_prefix
    key = f"{event['tenant']}/{event['doc_id']}/demo/0"
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(name, model.dimension)
        result = store.upsert(
            name,
            [
                ChunkObject(
                    uuid=object_uuid(key),
                    tenant=str(event["tenant"]),
                    properties={"chunk_key": key, "doc_id": event["doc_id"], "text": text},
                    vectors={CONTENT_VECTOR: vector.tolist()},
                )
            ],
        )
        if result.failed:
            raise RuntimeError(f"Weaviate refused the demo object: {result.failed}")
        store.point_alias(alias, name)
        query = model.encode(["which system answers vector queries?"])[0].tolist()
        hits = (
            client.collections.get(alias)
            .with_tenant(str(event["tenant"]))
            .query.near_vector(
                query, target_vector=CONTENT_VECTOR, limit=3, return_metadata=["distance"]
            )
        )
    typer.echo(f"weaviate: alias {alias} -> {name}; nearVector hits:")
    for hit in hits.objects:
        typer.echo(f"  {hit.metadata.distance:.3f}  {hit.properties['doc_id']}")
