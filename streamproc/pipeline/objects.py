"""What the embedder makes of one embed request for one target: the Weaviate object (its
properties and named vectors) and the embed-done record. Pure: no model call, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from streamproc.models import EmbeddingModel
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR, object_uuid
from streamproc.weaviate_schema import ChunkObject, Embedding, object_properties


@dataclass(frozen=True)
class Target:
    """A collection and the model whose vectors it holds."""

    model: EmbeddingModel
    collection: str


def heading_text(path: Sequence[str]) -> str:
    return " > ".join(path)


def token_count(model: EmbeddingModel, chunk: dict[str, Any]) -> int:
    counted = chunk["token_counts"].get(model.spec.name)
    # A model added after the chunk was made has no count yet: 4 characters a token.
    return counted if counted is not None else max(1, chunk["char_count"] // 4)


def chunk_object(
    target: Target,
    chunk: dict[str, Any],
    vector: list[float],
    heading_vectors: dict[str, Any],
    *,
    pii_mode: bool,
) -> ChunkObject:
    """The object that holds `chunk` in the target's collection, with both named vectors;
    without its text in PII mode."""
    spec = target.model.spec
    heading = heading_text(chunk["heading_path"])
    # A chunk without a heading gets its content vector as heading vector: every object
    # then has both, so a multi-target search ranks it, and Weaviate (whose collections
    # name a vectorizer) never embeds a missing vector itself.
    vectors: dict[str, Sequence[float]] = {
        CONTENT_VECTOR: vector,
        HEADING_VECTOR: heading_vectors[heading].tolist() if heading else vector,
    }
    return ChunkObject(
        uuid=object_uuid(chunk["chunk_key"]),
        tenant=chunk["tenant"],
        properties=object_properties(
            chunk,
            Embedding(
                model_name=spec.name,
                model_id=spec.source,
                model_revision=target.model.revision or spec.revision or "",
                model_version=spec.version,
            ),
            text="" if pii_mode else chunk["text"],
            token_count=token_count(target.model, chunk),
            embedded_at=datetime.now(UTC),
        ),
        vectors=vectors,
    )


def done_record(target: Target, request: dict[str, Any], status: str, uuid: UUID) -> dict[str, Any]:
    """The EmbedDone record of one request's write (or delete) in the target's collection."""
    now = datetime.now(UTC)
    return {
        "chunk_key": request["chunk_key"],
        "tenant": request["tenant"],
        "doc_id": request["doc_id"],
        "op": request["op"],
        "status": status,
        "collection": target.collection,
        "model_name": target.model.spec.name,
        "model_version": target.model.spec.version,
        "vector_dim": target.model.dimension,
        "object_uuid": str(uuid),
        "latency_ms": int((now - request["ingested_at"]).total_seconds() * 1000),
        "embedded_at": now,
        "unchanged": False,
    }
