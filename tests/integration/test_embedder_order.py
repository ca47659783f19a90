"""The embedder against real Weaviate and the real model: Kafka order holds inside a batch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from streamproc.chunking.tokenizers import splitter_for
from streamproc.models import load_model
from streamproc.naming import weaviate_tenant
from streamproc.pipeline.chunker import Chunker
from streamproc.pipeline.embedder import Embedder
from streamproc.pipeline.objects import Target
from streamproc.settings import Settings
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.embedder import background_pacing
from tests.pipeline_support import event


def test_a_delete_then_upsert_of_the_same_chunk_in_one_batch_leaves_the_chunk(
    settings: Settings,
) -> None:
    chunker = Chunker(settings.chunking, splitter_for(settings))
    now = datetime.now(UTC)
    upsert = event("acme", "doc", "# Title\n\nA paragraph that will be deleted and re-sent.")
    upsert.update(op="UPSERT", content_uri=None, content_sha256=None, metadata={}, ingested_at=None)
    first = chunker.process(upsert, None, now)
    deleted = chunker.process({**upsert, "op": "DELETE"}, first.state, now)
    again = chunker.process(upsert, None, now)
    batch = deleted.embed_requests + again.embed_requests
    assert [r["op"] for r in batch] == ["DELETE", "UPSERT"]

    model = load_model(settings.model(settings.active_model), "cpu")
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        collection = settings.collection_for(model.spec)
        store.ensure_collection(collection, model.dimension)
        embedder = Embedder(
            [Target(model, collection)], store, settings.embedder, background_pacing(settings)
        )
        try:
            result = asyncio.run(embedder.handle(batch))
        finally:
            embedder.close()
        assert [d["status"] for d in result.done] == ["DELETED", "EMBEDDED"]
        objects = (
            client.collections.get(collection)
            .with_tenant(weaviate_tenant("acme"))
            .query.fetch_objects()
        )
        assert [o.properties["chunk_key"] for o in objects.objects] == [batch[1]["chunk_key"]]
