"""The checks before an alias flip: per-tenant counts against the chunk topic's live keys,
the vector dimension against the model, and chunks that must find themselves first."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from weaviate.classes.query import MetadataQuery

from streamproc.avro_codec import load_schemas
from streamproc.kafka_io import live_chunks
from streamproc.models import EmbeddingModel, load_model
from streamproc.naming import object_uuid, weaviate_tenant
from streamproc.settings import Settings
from streamproc.verify import expected_by_tenant
from streamproc.weaviate_store import CONTENT_VECTOR, WeaviateStore, connect


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verification:
    collection: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def lines(self) -> list[str]:
        return [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def summary(self) -> str:
        return "; ".join(f"{c.name} {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in self.checks)


def count_checks(expected: dict[str, set[str]], actual: dict[str, int]) -> list[Check]:
    checks = []
    for tenant in sorted(set(expected) | set(actual)):
        want, have = len(expected.get(tenant, ())), actual.get(tenant, 0)
        detail = f"{have} objects, {want} live chunks"
        if have != want:
            detail += f" ({have - want:+d})"
        checks.append(Check(f"count[{tenant}]", have == want, detail))
    return checks


def self_retrieval_check(hits: int, sampled: int, threshold: float) -> Check:
    share = hits / sampled if sampled else 1.0
    return Check(
        "self-retrieval",
        share >= threshold,
        f"{hits}/{sampled} sampled chunks found themselves first ({share:.0%}, "
        f"threshold {threshold:.0%})",
    )


def verify_collection_for_flip(
    settings: Settings, collection: str, model: EmbeddingModel | None = None
) -> Verification:
    spec = settings.model_for_collection(collection)
    model = model or load_model(spec, settings.embedder.device)
    codec = load_schemas(settings.schemas_dir).codec("ChunkRecord")
    live = asyncio.run(live_chunks(settings))
    expected = expected_by_tenant(live)
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        tenants = set(expected) | set(store.tenants(collection))
        checks = count_checks(expected, {t: store.count(collection, t) for t in tenants})
        dimension = store.vector_dimension(collection)
        checks.append(
            Check(
                "dimension",
                dimension == spec.dimension,
                f"vectors have {dimension}, model {spec.name} {spec.version} gives {spec.dimension}",
            )
        )
        rng = random.Random(collection)
        keys = sorted(live)
        sample = rng.sample(keys, min(settings.backfill.verify_sample_size, len(keys)))
        records = [codec.decode(live[k]) for k in sample]
        vectors = model.encode([r["text"] for r in records]) if records else []
        hits = sum(
            _finds_itself(store, collection, record, vector.tolist())
            for record, vector in zip(records, vectors, strict=True)
        )
        checks.append(
            self_retrieval_check(hits, len(records), settings.backfill.min_self_retrieval)
        )
    return Verification(collection, checks)


def _finds_itself(
    store: WeaviateStore, collection: str, record: dict[str, Any], vector: list[float]
) -> bool:
    response = (
        store.client.collections.get(collection)
        .with_tenant(weaviate_tenant(record["tenant"]))
        .query.near_vector(
            vector,
            target_vector=CONTENT_VECTOR,
            limit=1,
            return_properties=["text_sha256"],
            return_metadata=MetadataQuery(distance=True),
        )
    )
    if not response.objects:
        return False
    top = response.objects[0]
    # A chunk with the very same text elsewhere ties with it; either is a correct answer.
    return top.uuid == object_uuid(record["chunk_key"]) or (
        top.properties.get("text_sha256") == record["text_sha256"]
    )
