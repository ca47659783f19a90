"""`streamproc verify`: does a collection hold exactly the live chunks of the chunk topic, each
in its live version?"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from streamproc.errors import StreamprocError
from streamproc.kafka_io import live_chunks
from streamproc.settings import Settings
from streamproc.topics import topics_for
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore

# Chunk key -> text_sha256, per tenant.
Hashes = Mapping[str, Mapping[str, str]]
# Keys named in a report line: enough to look one up, never a flood.
EXAMPLES = 3


@dataclass(frozen=True)
class TenantReport:
    tenant: str
    expected: int
    actual: int
    missing: list[str] = field(default_factory=list)  # live chunk keys the collection lacks
    unexpected: list[str] = field(default_factory=list)  # held chunk keys with no live chunk
    stale: list[str] = field(default_factory=list)  # held with another text than the live one

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and not self.stale

    def detail(self) -> str:
        """Counts, then a few example keys of each kind of difference."""
        text = (
            f"{self.actual} objects, {self.expected} live chunks, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.stale)} stale"
        )
        for name, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("stale", self.stale),
        ):
            if keys:
                more = f" (+{len(keys) - EXAMPLES})" if len(keys) > EXAMPLES else ""
                text += f"; {name} e.g. {', '.join(keys[:EXAMPLES])}{more}"
        return text


async def live_hashes(settings: Settings) -> dict[str, dict[str, str]]:
    """The chunk topic's live chunks as chunk key -> text_sha256 per tenant."""
    codec = topics_for(settings).chunks
    by_tenant: dict[str, dict[str, str]] = {}
    for key, value in (await live_chunks(settings)).items():
        tenant = key.split("/", 1)[0]
        by_tenant.setdefault(tenant, {})[key] = codec.decode(value)["text_sha256"]
    return by_tenant


def held_hashes(store: WeaviateStore, collection: str, tenant: str) -> dict[str, str]:
    """Chunk key -> text_sha256 of every object of one tenant of `collection`."""
    if tenant not in set(store.tenants(collection)):
        return {}
    return {
        str(obj.properties["chunk_key"]): str(obj.properties["text_sha256"])
        for obj in store.objects(collection, tenant, ["chunk_key", "text_sha256"])
    }


def compare(expected: Hashes, actual: Hashes) -> list[TenantReport]:
    """Per tenant: the live chunks against what the collection holds, by key and text hash."""
    reports = []
    for tenant in sorted(set(expected) | set(actual)):
        want = expected.get(tenant, {})
        have = actual.get(tenant, {})
        reports.append(
            TenantReport(
                tenant=tenant,
                expected=len(want),
                actual=len(have),
                missing=sorted(want.keys() - have.keys()),
                unexpected=sorted(have.keys() - want.keys()),
                stale=sorted(k for k in want.keys() & have.keys() if want[k] != have[k]),
            )
        )
    return reports


def compare_collection(
    store: WeaviateStore, collection: str, expected: Hashes, tenant: str | None = None
) -> list[TenantReport]:
    """`collection` against the chunk topic's live chunks `expected` (`live_hashes`); only
    `tenant` when given, every tenant otherwise. Blocks on Weaviate while it reads every
    object: async callers run it on a thread."""
    scope = None if tenant is None else {tenant}
    if scope is not None:
        expected = {t: keys for t, keys in expected.items() if t in scope}
    tenants = set(expected) | set(store.tenants(collection))
    if scope is not None:
        tenants &= scope
    actual = {t: held_hashes(store, collection, t) for t in tenants}
    return compare({t: expected.get(t, {}) for t in tenants}, actual)


async def verify_collection(
    settings: Settings, collection: str | None
) -> tuple[str, list[TenantReport]]:
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        name = collection or store.alias_target(settings.weaviate.collection_prefix)
        if name is None:
            raise StreamprocError(
                f"alias {settings.weaviate.collection_prefix} does not exist; pass --collection"
            )
        expected = await live_hashes(settings)
        return name, await asyncio.to_thread(compare_collection, store, name, expected)
