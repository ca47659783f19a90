"""`streamproc search`: the query embedded by the model of the collection the alias serves."""

from __future__ import annotations

from dataclasses import dataclass

from weaviate.classes.query import MetadataQuery

from streamproc.errors import StreamprocError
from streamproc.models import load_model
from streamproc.settings import Settings
from streamproc.weaviate_store import CONTENT_VECTOR, WeaviateStore, connect


@dataclass(frozen=True)
class Hit:
    score: float
    doc_id: str
    chunk_index: int
    heading_path: list[str]
    chunk_key: str


@dataclass(frozen=True)
class SearchResult:
    alias: str
    collection: str
    model: str
    hits: list[Hit]


def search_alias(settings: Settings, text: str, tenant: str, limit: int) -> SearchResult:
    alias = settings.weaviate.collection_prefix
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        collection = store.alias_target(alias)
        if collection is None:
            raise StreamprocError(f"alias {alias} does not exist yet: run a worker first")
        spec = settings.model_for_collection(collection)
        vector = load_model(spec, settings.embedder.device).encode([text])[0].tolist()
        response = (
            client.collections.get(alias)
            .with_tenant(tenant)
            .query.near_vector(
                vector,
                target_vector=CONTENT_VECTOR,
                limit=limit,
                return_metadata=MetadataQuery(distance=True),
            )
        )
    hits = [
        Hit(
            score=1.0 - (obj.metadata.distance or 0.0),
            doc_id=str(obj.properties["doc_id"]),
            chunk_index=int(obj.properties["chunk_index"] or 0),
            heading_path=list(obj.properties.get("heading_path") or []),
            chunk_key=str(obj.properties["chunk_key"]),
        )
        for obj in response.objects
    ]
    return SearchResult(alias, collection, f"{spec.name} {spec.version}", hits)
