"""Named self-provided vectors, multi-tenancy, nearVector, and the alias flip on real Weaviate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from weaviate.classes.query import MetadataQuery

from streamproc.errors import ConfigurationError
from streamproc.naming import CONTENT_VECTOR, collection_name, object_uuid
from streamproc.settings import Settings
from streamproc.weaviate_client import connect
from streamproc.weaviate_schema import ChunkObject
from streamproc.weaviate_store import WeaviateStore


def _obj(key: str, vector: list[float], tenant: str = "acme") -> ChunkObject:
    return ChunkObject(
        uuid=object_uuid(key),
        tenant=tenant,
        properties={"chunk_key": key, "tenant": tenant, "doc_id": key.split("/")[1]},
        vectors={CONTENT_VECTOR: vector},
    )


def test_named_vector_near_vector_and_alias_flip(settings: Settings) -> None:
    prefix = settings.weaviate.collection_prefix
    first, second = collection_name(prefix, "m", "v1"), collection_name(prefix, "m", "v2")
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(first, 3, heading_vector=False)
        store.ensure_collection(second, 2, heading_vector=False)
        result = store.upsert(
            first, [_obj("acme/a/p1/0", [1.0, 0.0, 0.0]), _obj("acme/b/p1/0", [0.0, 1.0, 0.0])]
        )
        assert not result.failed and len(result.written) == 2
        # Upserting the same key again overwrites; it never duplicates.
        store.upsert(first, [_obj("acme/a/p1/0", [0.9, 0.1, 0.0])])
        assert store.count(first, "acme") == 2
        store.upsert(second, [_obj("acme/c/p1/0", [1.0, 0.0])])

        store.point_alias(prefix, first)
        hits = (
            client.collections.get(prefix)
            .with_tenant("acme")
            .query.near_vector(
                [1.0, 0.0, 0.0],
                target_vector=CONTENT_VECTOR,
                limit=2,
                return_metadata=MetadataQuery(distance=True),
            )
        )
        assert [h.properties["doc_id"] for h in hits.objects] == ["a", "b"]

        assert store.point_alias(prefix, second) == first
        assert store.alias_target(prefix) == second
        hits = (
            client.collections.get(prefix)
            .with_tenant("acme")
            .query.near_vector([1.0, 0.0], target_vector=CONTENT_VECTOR, limit=5)
        )
        assert [h.properties["doc_id"] for h in hits.objects] == ["c"]


def test_tenants_are_isolated(settings: Settings) -> None:
    name = collection_name(settings.weaviate.collection_prefix, "m", "v1")
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(name, 2, heading_vector=False)
        store.upsert(
            name,
            [_obj("a/x/p1/0", [1.0, 0.0], tenant="a"), _obj("b/y/p1/0", [1.0, 0.0], tenant="b")],
        )
        hits = store.near_vector(
            name, "a", [1.0, 0.0], targets=[CONTENT_VECTOR], limit=10, properties=["tenant"]
        )
        assert {h.properties["tenant"] for h in hits} == {"a"}
        assert [h.uuid for h in hits] == [object_uuid("a/x/p1/0")]
        held = store.objects(name, "b", ["chunk_key"])
        assert {(o.uuid, o.properties["chunk_key"]) for o in held} == {
            (object_uuid("b/y/p1/0"), "b/y/p1/0")
        }
        assert store.uuids(name, "b") == {object_uuid("b/y/p1/0")}
        assert store.count(name, "b") == 1
        # A tenant the collection does not hold has no objects; it is not made by asking.
        assert store.uuids(name, "c") == set() and store.count(name, "c") == 0
        assert list(store.objects(name, "c", ["chunk_key"])) == []
        assert store.tenants(name) == ["a", "b"]
        assert store.exists(name) and not store.exists(f"{name}_absent")


def test_dimension_mismatch_is_refused_with_the_fix(settings: Settings) -> None:
    import pytest

    from streamproc.errors import ConfigurationError

    name = collection_name(settings.weaviate.collection_prefix, "m", "v1")
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(name, 3, heading_vector=False)
        store.upsert(name, [_obj("acme/a/p1/0", [1.0, 0.0, 0.0])])
        with pytest.raises(ConfigurationError, match="new version"):
            store.ensure_collection(name, 4, heading_vector=False)


def test_workers_starting_together_share_the_collection_and_alias_one_created(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two embedders starting at once both see no collection and no alias, and both create
    them: the one that loses the race uses what the other created instead of crashing."""
    prefix = settings.weaviate.collection_prefix
    name = collection_name(prefix, "m", "v1")
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(name, 3, heading_vector=False)
        store.point_alias(prefix, name)
        # This worker looked before the other one created them.
        monkeypatch.setattr(client.collections, "exists", lambda _name: False)
        monkeypatch.setattr(store, "alias_target", _once(None, store.alias_target))

        store.ensure_collection(name, 3, heading_vector=False)
        assert store.point_alias(prefix, name) == name
        # The dimension is still checked against the collection the other worker made.
        store.upsert(name, [_obj("acme/a/p1/0", [1.0, 0.0, 0.0])])
        with pytest.raises(ConfigurationError, match="3-dimensional"):
            store.ensure_collection(name, 2, heading_vector=False)
        assert store.alias_target(prefix) == name


def _once(first: object, then: Callable[..., object]) -> Callable[..., object]:
    calls = iter([lambda *_: first])
    return lambda *args: next(calls, then)(*args)
