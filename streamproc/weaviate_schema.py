"""What a collection holds: every object's properties, its named vectors and how a new
collection configures them; what the store's writes and reads return."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from weaviate.classes.config import Configure, DataType, Property, VectorDistances
from weaviate.classes.query import TargetVectors
from weaviate.collections.classes.config_vectors import _VectorConfigCreate
from weaviate.collections.classes.grpc import TargetVectorJoinType

from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR

# Every object's properties (DESIGN.md section 2).
PROPERTIES = [
    Property(name="chunk_key", data_type=DataType.TEXT, skip_vectorization=True),
    Property(name="tenant", data_type=DataType.TEXT),
    Property(name="doc_id", data_type=DataType.TEXT),
    Property(name="chunk_index", data_type=DataType.INT),
    Property(name="heading_path", data_type=DataType.TEXT_ARRAY),
    Property(name="text", data_type=DataType.TEXT),
    Property(name="text_sha256", data_type=DataType.TEXT),
    Property(name="char_count", data_type=DataType.INT),
    Property(name="token_count", data_type=DataType.INT),
    Property(name="truncated", data_type=DataType.BOOL),
    # The registry name of the model that embedded the object; model_id is where it came from.
    Property(name="model_name", data_type=DataType.TEXT),
    Property(name="model_id", data_type=DataType.TEXT),
    Property(name="model_revision", data_type=DataType.TEXT),
    Property(name="model_version", data_type=DataType.TEXT),
    Property(name="policy_version", data_type=DataType.TEXT),
    Property(name="source_uri", data_type=DataType.TEXT),
    Property(name="ingested_at", data_type=DataType.DATE),
    Property(name="embedded_at", data_type=DataType.DATE),
]


@dataclass(frozen=True)
class Embedding:
    """Which model embedded an object: its registry name, version and where it came from."""

    model_name: str
    model_id: str
    model_revision: str
    model_version: str


def object_properties(
    chunk: Mapping[str, Any],
    embedding: Embedding,
    *,
    text: str,
    token_count: int,
    embedded_at: datetime,
) -> dict[str, Any]:
    """The properties (`PROPERTIES`) of the object that holds `chunk`, a chunk record."""
    return {
        "chunk_key": chunk["chunk_key"],
        "tenant": chunk["tenant"],
        "doc_id": chunk["doc_id"],
        "chunk_index": chunk["chunk_index"],
        "heading_path": chunk["heading_path"],
        "text": text,
        "text_sha256": chunk["text_sha256"],
        "char_count": chunk["char_count"],
        "token_count": token_count,
        "truncated": chunk["truncated"],
        "model_name": embedding.model_name,
        "model_id": embedding.model_id,
        "model_revision": embedding.model_revision,
        "model_version": embedding.model_version,
        "policy_version": chunk["policy_version"],
        "source_uri": chunk["source_uri"] or "",
        "ingested_at": chunk["ingested_at"],
        "embedded_at": embedded_at,
    }


@dataclass(frozen=True)
class ChunkObject:
    """One object to upsert: properties plus its named vectors."""

    uuid: UUID
    tenant: str
    properties: dict[str, Any]
    vectors: dict[str, Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """Per object: done (written, or deleted), rejected for good, or rejected for now."""

    written: list[UUID]
    # UUID -> Weaviate's message: retrying cannot help, the request goes to the DLQ.
    failed: dict[UUID, str]
    # UUID -> Weaviate's message: a read-only shard, a timeout...; worth sending again later.
    retry: dict[UUID, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Found:
    """An object a read returned: its id and the properties it asked for."""

    uuid: UUID
    properties: dict[str, Any]


# The property each named vector embeds, for Weaviate's own vectorizer (queries only).
SOURCES = {CONTENT_VECTOR: ["text"], HEADING_VECTOR: ["heading_path"]}


def vector_configs(heading_vector: bool, inference_url: str | None) -> list[_VectorConfigCreate]:
    """A new collection's named vectors: `content`, and `heading` unless asked not to."""
    names = [CONTENT_VECTOR, HEADING_VECTOR] if heading_vector else [CONTENT_VECTOR]
    return [_vector_config(vector, SOURCES[vector], inference_url) for vector in names]


def _vector_config(
    name: str, source_properties: list[str], inference_url: str | None
) -> _VectorConfigCreate:
    index = Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
    if inference_url is None:
        return Configure.Vectors.self_provided(name=name, vector_index_config=index)
    return Configure.Vectors.text2vec_transformers(
        name=name,
        inference_url=inference_url,
        source_properties=source_properties,
        vectorize_collection_name=False,
        vector_index_config=index,
    )


def query_endpoint(collection_config: Any, vector: str) -> str | None:
    config = (
        collection_config.vector_config.get(vector) if collection_config.vector_config else None
    )
    if config is None:
        return None
    return config.vectorizer.model.get("inferenceUrl")


def target_vector(targets: Sequence[str]) -> TargetVectorJoinType:
    """What a query searches: one named vector, or several with their distances averaged."""
    if len(targets) == 1:
        return targets[0]
    return TargetVectors.average(list(targets))
