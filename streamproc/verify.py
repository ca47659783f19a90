"""`streamproc verify`: does a collection hold exactly the live chunks of the chunk topic?"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from streamproc.errors import StreamprocError
from streamproc.kafka_io import live_chunks
from streamproc.naming import object_uuid
from streamproc.settings import Settings
from streamproc.weaviate_store import WeaviateStore, connect


@dataclass(frozen=True)
class TenantReport:
    tenant: str
    expected: int
    actual: int
    missing: list[str] = field(default_factory=list)  # chunk keys absent from the collection
    unexpected: list[str] = field(default_factory=list)  # object UUIDs with no live chunk

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and self.expected == self.actual


def expected_by_tenant(chunk_keys: Iterable[str]) -> dict[str, set[str]]:
    by_tenant: dict[str, set[str]] = {}
    for key in chunk_keys:
        by_tenant.setdefault(key.split("/", 1)[0], set()).add(key)
    return by_tenant


def compare(
    expected: Mapping[str, set[str]], actual: Mapping[str, set[UUID]]
) -> list[TenantReport]:
    """Per tenant: live chunk keys against the UUIDs the collection holds."""
    reports = []
    for tenant in sorted(set(expected) | set(actual)):
        keys = expected.get(tenant, set())
        uuids = actual.get(tenant, set())
        wanted = {object_uuid(k): k for k in keys}
        reports.append(
            TenantReport(
                tenant=tenant,
                expected=len(keys),
                actual=len(uuids),
                missing=sorted(k for u, k in wanted.items() if u not in uuids),
                unexpected=sorted(str(u) for u in uuids if u not in wanted),
            )
        )
    return reports


def verify_collection(settings: Settings, collection: str | None) -> tuple[str, list[TenantReport]]:
    live = asyncio.run(live_chunks(settings))
    expected = expected_by_tenant(live)
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        name = collection or store.alias_target(settings.weaviate.collection_prefix)
        if name is None:
            raise StreamprocError(
                f"alias {settings.weaviate.collection_prefix} does not exist; pass --collection"
            )
        tenants = set(expected) | set(store.tenants(name))
        actual = {t: store.uuids(name, t) for t in tenants}
    return name, compare(expected, actual)
