"""Weaviate edge: one multi-tenant collection per model version, named vectors, the serving alias."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import weaviate
from weaviate.classes.config import Configure, DataType, Property, VectorDistances
from weaviate.classes.query import Filter
from weaviate.classes.tenants import Tenant
from weaviate.collections import Collection
from weaviate.collections.classes.data import DataObject
from weaviate.exceptions import WeaviateBaseError

from streamproc.errors import ConfigurationError, TransientError
from streamproc.naming import weaviate_tenant
from streamproc.settings import WeaviateSettings

CONTENT_VECTOR = "content"
HEADING_VECTOR = "heading"

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
    Property(name="model_id", data_type=DataType.TEXT),
    Property(name="model_revision", data_type=DataType.TEXT),
    Property(name="model_version", data_type=DataType.TEXT),
    Property(name="policy_version", data_type=DataType.TEXT),
    Property(name="source_uri", data_type=DataType.TEXT),
    Property(name="ingested_at", data_type=DataType.DATE),
    Property(name="embedded_at", data_type=DataType.DATE),
]


@dataclass(frozen=True)
class ChunkObject:
    """One object to upsert: properties plus its named vectors."""

    uuid: UUID
    tenant: str
    properties: dict[str, Any]
    vectors: dict[str, Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    written: list[UUID]
    failed: dict[UUID, str]


@contextmanager
def connect(settings: WeaviateSettings) -> Iterator[weaviate.WeaviateClient]:
    auth = weaviate.auth.AuthApiKey(settings.api_key) if settings.api_key else None
    try:
        client = weaviate.connect_to_custom(
            http_host=settings.http_host,
            http_port=settings.http_port,
            http_secure=settings.http_secure,
            grpc_host=settings.grpc_host,
            grpc_port=settings.grpc_port,
            grpc_secure=settings.grpc_secure,
            auth_credentials=auth,
            # The default checks also ask pypi.org for the newest client: no outside calls.
            skip_init_checks=True,
        )
        if not client.is_ready():
            client.close()
            raise TransientError(f"Weaviate at {settings.http_url} is not ready")
    except WeaviateBaseError as exc:
        raise TransientError(f"cannot connect to Weaviate at {settings.http_url}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


class WeaviateStore:
    def __init__(self, client: weaviate.WeaviateClient) -> None:
        self.client = client
        self._known_tenants: dict[str, set[str]] = {}

    def ensure_collection(self, name: str, dimension: int, *, heading_vector: bool = True) -> None:
        """Create the collection if missing; refuse if it exists with another vector dimension."""
        if self.client.collections.exists(name):
            existing = self.vector_dimension(name)
            if existing is not None and existing != dimension:
                raise ConfigurationError(
                    f"collection {name} holds {existing}-dimensional vectors but the model gives "
                    f"{dimension}; register the model under a new version (a new collection) "
                    f"or fix its dimension in the registry"
                )
            return
        vectors = [
            Configure.Vectors.self_provided(
                name=CONTENT_VECTOR,
                vector_index_config=Configure.VectorIndex.hnsw(
                    distance_metric=VectorDistances.COSINE
                ),
            )
        ]
        if heading_vector:
            vectors.append(
                Configure.Vectors.self_provided(
                    name=HEADING_VECTOR,
                    vector_index_config=Configure.VectorIndex.hnsw(
                        distance_metric=VectorDistances.COSINE
                    ),
                )
            )
        self.client.collections.create(
            name,
            properties=PROPERTIES,
            vector_config=vectors,
            multi_tenancy_config=Configure.multi_tenancy(
                enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
            ),
            description=f"streamproc chunks, {dimension}-dimensional",
        )

    def vector_dimension(self, name: str) -> int | None:
        """The dimension of the collection's `content` vectors, from any one object, if it has any."""
        collection = self.client.collections.get(name)
        for tenant in collection.tenants.get():
            result = collection.with_tenant(tenant).query.fetch_objects(
                limit=1, include_vector=[CONTENT_VECTOR]
            )
            for obj in result.objects:
                vector = obj.vector.get(CONTENT_VECTOR)
                if vector:
                    return len(vector)
        return None

    def ensure_tenants(self, name: str, tenants: set[str]) -> None:
        known = self._known_tenants.setdefault(name, set())
        missing = {weaviate_tenant(t) for t in tenants} - known
        if not missing:
            return
        collection = self.client.collections.get(name)
        existing = set(collection.tenants.get())
        new = missing - existing
        if new:
            collection.tenants.create([Tenant(name=t) for t in sorted(new)])
        known.update(missing)

    def upsert(self, name: str, objects: Sequence[ChunkObject]) -> WriteResult:
        """Batch upsert; every object's result is checked, failures are returned, not dropped."""
        collection = self.client.collections.get(name)
        self.ensure_tenants(name, {o.tenant for o in objects})
        written: list[UUID] = []
        failed: dict[UUID, str] = {}
        for tenant, group in _by_tenant(objects).items():
            result = collection.with_tenant(weaviate_tenant(tenant)).data.insert_many(
                [
                    DataObject(properties=o.properties, uuid=o.uuid, vector=dict(o.vectors))
                    for o in group
                ]
            )
            for index, obj in enumerate(group):
                error = result.errors.get(index)
                if error is None:
                    written.append(obj.uuid)
                else:
                    failed[obj.uuid] = error.message
        return WriteResult(written, failed)

    def delete(self, name: str, tenant: str, uuids: Sequence[UUID]) -> None:
        if not uuids:
            return
        collection = self.client.collections.get(name)
        if weaviate_tenant(tenant) not in set(collection.tenants.get()):
            return
        scoped = collection.with_tenant(weaviate_tenant(tenant))
        scoped.data.delete_many(where=Filter.by_id().contains_any(list(uuids)))

    def held(self, name: str, tenant: str, uuids: Sequence[UUID]) -> dict[UUID, tuple[Any, str]]:
        """(ingested_at, text_sha256) of those of `uuids` the collection holds."""
        if not uuids:
            return {}
        collection = self.client.collections.get(name)
        if weaviate_tenant(tenant) not in set(collection.tenants.get()):
            return {}
        result = collection.with_tenant(weaviate_tenant(tenant)).query.fetch_objects(
            filters=Filter.by_id().contains_any(list(uuids)),
            limit=len(uuids),
            return_properties=["ingested_at", "text_sha256"],
        )
        return {
            o.uuid: (o.properties["ingested_at"], str(o.properties["text_sha256"]))
            for o in result.objects
        }

    def collections(self, prefix: str) -> list[str]:
        """Every collection named `{prefix}_...`: one per model version."""
        return sorted(
            n for n in self.client.collections.list_all(simple=True) if n.startswith(f"{prefix}_")
        )

    def drop(self, name: str) -> None:
        self.client.collections.delete(name)

    def count(self, name: str, tenant: str) -> int:
        collection = self.client.collections.get(name)
        if tenant not in set(collection.tenants.get()):
            return 0
        return collection.with_tenant(tenant).aggregate.over_all(total_count=True).total_count or 0

    def uuids(self, name: str, tenant: str) -> set[UUID]:
        collection = self.client.collections.get(name)
        if tenant not in set(collection.tenants.get()):
            return set()
        return {o.uuid for o in collection.with_tenant(tenant).iterator(return_properties=[])}

    def tenants(self, name: str) -> list[str]:
        return sorted(self.client.collections.get(name).tenants.get())

    def collection(self, name: str, tenant: str) -> Collection[Any, Any]:
        return self.client.collections.get(name).with_tenant(weaviate_tenant(tenant))

    # --- the serving alias -------------------------------------------------------------------

    def alias_target(self, alias: str) -> str | None:
        found = self.client.alias.get(alias_name=alias)
        return found.collection if found else None

    def point_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection`, creating it if needed; returns the previous target."""
        previous = self.alias_target(alias)
        if previous is None:
            self.client.alias.create(alias_name=alias, target_collection=collection)
        elif previous != collection:
            self.client.alias.update(alias_name=alias, new_target_collection=collection)
        return previous


def _by_tenant(objects: Sequence[ChunkObject]) -> dict[str, list[ChunkObject]]:
    groups: dict[str, list[ChunkObject]] = {}
    for obj in objects:
        groups.setdefault(obj.tenant, []).append(obj)
    return groups
