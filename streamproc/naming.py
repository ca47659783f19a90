"""Ids and names of DESIGN.md section 2: chunk keys, object UUIDs, collection names."""

from __future__ import annotations

import re
import uuid

# Fixed forever: changing it would give every chunk a new UUID in every collection.
NAMESPACE = uuid.UUID("5d0a4f8e-3c55-5b9e-9f0a-7b3c1e2d4a60")

_SLUG = re.compile(r"[^a-z0-9]+")


def document_key(tenant: str, doc_id: str) -> str:
    return f"{tenant}/{doc_id}"


def chunk_key(tenant: str, doc_id: str, policy_version: str, chunk_index: int) -> str:
    """`tenant/doc_id/policy/index`: the policy is part of the key, so re-chunking never collides."""
    return f"{tenant}/{doc_id}/{policy_version}/{chunk_index}"


def object_uuid(key: str) -> uuid.UUID:
    """The same chunk has the same UUID in every collection: re-delivery overwrites."""
    return uuid.uuid5(NAMESPACE, key)


def model_slug(model_name: str) -> str:
    slug = _SLUG.sub("_", model_name.lower()).strip("_")
    if not slug:
        raise ValueError(f"model name {model_name!r} has no letters or digits")
    return slug


# The named vectors of every collection: the chunk text, and the heading path.
CONTENT_VECTOR = "content"
HEADING_VECTOR = "heading"


def collection_name(prefix: str, model_name: str, version: str) -> str:
    """`{Prefix}_{model_slug}_{version}`, e.g. `Chunk_all_minilm_l6_v2_v1`."""
    if not prefix or not prefix[0].isupper():
        raise ValueError(f"collection prefix {prefix!r} must start with an upper-case letter")
    return f"{prefix}_{model_slug(model_name)}_{version.lower()}"


def weaviate_tenant(tenant: str) -> str:
    """Weaviate tenant names allow letters, digits, '-' and '_' only; reject the rest clearly."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tenant):
        return tenant
    raise ValueError(
        f"tenant {tenant!r} must be 1-64 letters, digits, '-' or '_' (Weaviate tenant name rules)"
    )
