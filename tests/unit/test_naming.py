from __future__ import annotations

import pytest

from streamproc.naming import chunk_key, collection_name, object_uuid, weaviate_tenant


def test_collection_name_follows_design() -> None:
    assert collection_name("Chunk", "all-MiniLM-L6-v2", "v1") == "Chunk_all_minilm_l6_v2_v1"


def test_uuid_is_deterministic_and_key_specific() -> None:
    key = chunk_key("acme", "doc", "p1", 0)
    assert key == "acme/doc/p1/0"
    assert object_uuid(key) == object_uuid("acme/doc/p1/0")
    assert object_uuid(key) != object_uuid(chunk_key("acme", "doc", "p1", 1))


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "ten/ant"])
def test_bad_tenant_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        weaviate_tenant(bad)


def test_prefix_must_be_a_weaviate_class_name() -> None:
    with pytest.raises(ValueError, match="upper-case"):
        collection_name("chunk", "m", "v1")
