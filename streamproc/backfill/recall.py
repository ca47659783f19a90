"""A collection's recall on self-derived queries, measured through Weaviate: each query is
embedded by the collection's own model and searched on its named vectors as they serve."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from streamproc.backfill.quality import Query, Scores, score
from streamproc.models import EmbeddingModel
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR, weaviate_tenant
from streamproc.weaviate_store import WeaviateStore

K = 10


def target_vectors(names: Collection[str]) -> list[str]:
    """Content and heading vectors, their distances averaged, where the collection has both;
    content alone in one created without a heading vector. (Weaviate leaves out of a
    multi-target search an object that lacks a target; the embedder gives a chunk without a
    heading its content vector as heading vector, so none does.)"""
    if HEADING_VECTOR in names:
        return [CONTENT_VECTOR, HEADING_VECTOR]
    return [CONTENT_VECTOR]


def measure(
    store: WeaviateStore,
    collection: str,
    model: EmbeddingModel,
    queries: Sequence[Query],
    k: int = K,
) -> Scores:
    """Recall@k and MRR of `collection` on `queries`, each searched in its own tenant; a tenant
    the collection does not hold finds nothing."""
    targets = target_vectors(store.vector_names(collection))
    tenants = set(store.tenants(collection))
    vectors = model.encode([q.text for q in queries]) if queries else []
    results = []
    for query, vector in zip(queries, vectors, strict=True):
        tenant = weaviate_tenant(query.tenant)
        ranked: list[str] = []
        if tenant in tenants:
            found = store.near_vector(
                collection,
                query.tenant,
                vector.tolist(),
                targets=targets,
                limit=k,
                properties=["chunk_key"],
            )
            ranked = [str(o.properties["chunk_key"]) for o in found]
        results.append((query, ranked))
    return score(results, k)
