"""The store's own rules, checked before any call reaches Weaviate: tenant names and the object
schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from weaviate.classes.config import DataType

from streamproc.naming import CONTENT_VECTOR, object_uuid
from streamproc.weaviate_schema import PROPERTIES, ChunkObject, Embedding, object_properties
from streamproc.weaviate_store import WeaviateStore
from tests.stand_ins import unconnected_store

# Not a Weaviate tenant name (its rules allow letters, digits, '-' and '_').
BAD_TENANT = "acme/eu"
KEY = "acme/eu/doc/p1/0"


PER_TENANT: dict[str, Callable[[WeaviateStore], Any]] = {
    "upsert": lambda s: s.upsert(
        "C", [ChunkObject(object_uuid(KEY), BAD_TENANT, {}, {CONTENT_VECTOR: [1.0]})]
    ),
    "delete": lambda s: s.delete("C", BAD_TENANT, [object_uuid(KEY)]),
    "held": lambda s: s.held("C", BAD_TENANT, [object_uuid(KEY)]),
    "count": lambda s: s.count("C", BAD_TENANT),
    "uuids": lambda s: s.uuids("C", BAD_TENANT),
    "objects": lambda s: list(s.objects("C", BAD_TENANT, ["chunk_key"])),
    "near_vector": lambda s: s.near_vector(
        "C", BAD_TENANT, [1.0], targets=[CONTENT_VECTOR], limit=1, properties=[]
    ),
    "collection": lambda s: s.collection("C", BAD_TENANT),
}


@pytest.mark.parametrize("call", PER_TENANT.values(), ids=PER_TENANT.keys())
def test_every_per_tenant_call_maps_the_tenant_name_first(
    call: Callable[[WeaviateStore], Any],
) -> None:
    """Old code: `count` and `uuids` looked the tenant up unmapped, so a name Weaviate cannot
    hold read as an empty tenant there while `delete` and `held` refused it."""
    with pytest.raises(ValueError, match="Weaviate tenant name rules"):
        call(unconnected_store())


_PYTHON_TYPES: dict[DataType, type | tuple[type, ...]] = {
    DataType.TEXT: str,
    DataType.INT: int,
    DataType.BOOL: bool,
    DataType.DATE: datetime,
    DataType.TEXT_ARRAY: list,
}


def test_an_objects_properties_are_the_collections_schema() -> None:
    chunk = {
        "chunk_key": KEY,
        "tenant": "acme",
        "doc_id": "doc",
        "chunk_index": 0,
        "heading_path": ["Intro"],
        "text": "body",
        "text_sha256": "0" * 64,
        "char_count": 4,
        "truncated": False,
        "policy_version": "p1",
        "source_uri": None,
        "ingested_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    properties = object_properties(
        chunk,
        Embedding(model_name="m", model_id="org/m", model_revision="", model_version="v1"),
        text=chunk["text"],
        token_count=2,
        embedded_at=datetime.now(UTC),
    )
    assert list(properties) == [p.name for p in PROPERTIES]
    for prop in PROPERTIES:
        assert isinstance(properties[prop.name], _PYTHON_TYPES[prop.dataType]), prop.name
    assert properties["source_uri"] == ""
