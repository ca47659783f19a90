"""The exact check that ends every fault case.

Per collection and tenant, the set of (chunk key, text sha256) in Weaviate against the live
records of the compacted `chunks` topic; an EMBEDDED `embed-done` for every live chunk's latest
version in every collection; and the DLQs holding only what was meant to go there.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from streamproc.avro_codec import load_schemas
from streamproc.chunking.extract import extract_sections
from streamproc.chunking.tokenizers import splitter_for
from streamproc.dlq import DLQ_HEADER_PREFIX
from streamproc.kafka_io import decode_value, live_chunks, read_to_end
from streamproc.naming import chunk_key, object_uuid
from streamproc.settings import Settings
from streamproc.topics import dead_letter_topic, topic_name
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore

DLQ_TOPICS = ("chunk-requested", "embed-requested", "backfill-commands")


@dataclass(frozen=True)
class LiveChunk:
    key: str
    text_sha256: str
    ingested_ms: int


@dataclass(frozen=True)
class Finding:
    where: str  # collection, or DLQ topic
    key: str
    why: str

    def __str__(self) -> str:
        return f"{self.where} {self.key}: {self.why}"


@dataclass
class CheckReport:
    live_chunks: int
    collections: dict[str, int] = field(default_factory=dict)  # objects held per collection
    lost: list[Finding] = field(default_factory=list)
    duplicated: list[Finding] = field(default_factory=list)
    dead_lettered: list[Finding] = field(default_factory=list)
    missing_done: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.dead_lettered or self.missing_done)

    def summary(self, examples: int = 5) -> str:
        lines = [
            f"live chunks {self.live_chunks}, objects {self.collections}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, dead-lettered {len(self.dead_lettered)}, "
            f"without embed-done {len(self.missing_done)}"
        ]
        for name in ("lost", "duplicated", "dead_lettered", "missing_done"):
            found: list[Finding] = getattr(self, name)
            lines.extend(f"  {name}: {f}" for f in found[:examples])
        return "\n".join(lines)


def millis(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)


def compare_objects(
    collection: str,
    expected: Mapping[str, LiveChunk],
    actual: Mapping[UUID, tuple[str, str]],
) -> tuple[list[Finding], list[Finding]]:
    """(lost, duplicated) of one tenant: `actual` maps object UUID to (chunk key, sha256).

    Lost: a live chunk with no object. Duplicated: an object that should not be there (a
    deleted or never-live key) or that holds another version of its chunk (a stale hash).
    """
    lost: list[Finding] = []
    duplicated: list[Finding] = []
    wanted = {object_uuid(key): chunk for key, chunk in expected.items()}
    for uuid, chunk in sorted(wanted.items(), key=lambda item: item[1].key):
        held = actual.get(uuid)
        if held is None:
            lost.append(Finding(collection, chunk.key, "missing"))
        elif held[1] != chunk.text_sha256:
            duplicated.append(
                Finding(
                    collection,
                    chunk.key,
                    f"stale version: holds sha {held[1][:12]}, topic has {chunk.text_sha256[:12]}",
                )
            )
    for uuid, (key, _sha) in sorted(actual.items(), key=lambda item: item[1][0]):
        if uuid not in wanted:
            duplicated.append(Finding(collection, key or str(uuid), "present but not live"))
    return lost, duplicated


def compare_topic(
    expected: Mapping[str, str], live: Mapping[str, LiveChunk]
) -> tuple[list[Finding], list[Finding]]:
    """(lost, duplicated) of the chunk topic against what the load's final documents chunk to
    (key -> sha256): what the chunker itself lost or left behind, which Weaviate then
    mirrors faithfully."""
    where = "chunks topic"
    lost = [
        Finding(where, key, "missing" if key not in live else "stale version")
        for key, sha in sorted(expected.items())
        if key not in live or live[key].text_sha256 != sha
    ]
    duplicated = [
        Finding(where, key, "live but not in the load's final documents")
        for key in sorted(set(live) - set(expected))
    ]
    return lost, duplicated


def chunks_of(
    settings: Settings, documents: Mapping[tuple[str, str], str | None]
) -> dict[str, str]:
    """Chunk key -> text sha256 of each (tenant, doc_id)'s markdown (None: deleted), by the
    chunker's own pure code."""
    splitter = splitter_for(settings)
    policy = settings.chunking.policy_version
    out = {}
    for (tenant, doc_id), text in documents.items():
        if text is None:
            continue
        for draft in splitter.split(extract_sections(text, "text/markdown")):
            key = chunk_key(tenant, doc_id, policy, draft.index)
            out[key] = hashlib.sha256(draft.text.encode()).hexdigest()
    return out


def missing_embed_done(
    live: Iterable[LiveChunk], done: Iterable[Mapping[str, Any]], collections: Iterable[str]
) -> list[Finding]:
    """Live chunks without an EMBEDDED record for their latest version in each collection.

    An embed-done names its version by `embedded_at - latency_ms`, which is the chunk's
    `ingested_at` (one millisecond apart at most, from float rounding of the latency)."""
    embedded: dict[tuple[str, str], set[int]] = {}
    for record in done:
        if record.get("status") != "EMBEDDED":
            continue
        ingested = millis(record["embedded_at"]) - int(record["latency_ms"])
        embedded.setdefault((record["collection"], record["chunk_key"]), set()).add(ingested)
    findings = []
    for collection in collections:
        for chunk in sorted(live, key=lambda c: c.key):
            versions = embedded.get((collection, chunk.key), set())
            if not any(abs(v - chunk.ingested_ms) <= 1 for v in versions):
                why = "no EMBEDDED record" if not versions else "no EMBEDDED for latest version"
                findings.append(Finding(collection, chunk.key, why))
    return findings


def unexpected_dead_letters(
    records: Iterable[tuple[str, str, str]], expected: frozenset[str]
) -> list[Finding]:
    """`records` are (DLQ topic, key, reason); those whose key was not meant to go there."""
    return [Finding(topic, key, reason) for topic, key, reason in records if key not in expected]


async def _topic(settings: Settings, name: str) -> list[tuple[Any, Any]]:
    schemas = load_schemas(settings.schemas_dir)
    return [(r, decode_value(schemas, r.value)) async for r in read_to_end(settings, name)]


def read_live(settings: Settings) -> dict[str, LiveChunk]:
    codec = load_schemas(settings.schemas_dir).codec("ChunkRecord")
    live = {}
    for key, value in asyncio.run(live_chunks(settings)).items():
        record = codec.decode(value)
        live[key] = LiveChunk(key, record["text_sha256"], millis(record["ingested_at"]))
    return live


def read_objects(settings: Settings, collection: str) -> dict[str, dict[UUID, tuple[str, str]]]:
    """Per tenant, every object's UUID with its chunk key and text hash."""
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        if not client.collections.exists(collection):
            return {}
        return {
            tenant: {
                o.uuid: (str(o.properties.get("chunk_key") or ""), str(o.properties["text_sha256"]))
                for o in store.collection(collection, tenant).iterator(
                    return_properties=["chunk_key", "text_sha256"]
                )
            }
            for tenant in store.tenants(collection)
        }


def read_dead_letters(settings: Settings) -> list[tuple[str, str, str]]:
    out = []
    for topic in DLQ_TOPICS:
        name = dead_letter_topic(topic_name(settings, topic))
        for record, _ in asyncio.run(_topic(settings, name)):
            headers = {k: v.decode(errors="replace") for k, v in record.headers}
            key = record.key.decode(errors="replace") if record.key is not None else ""
            reason = headers.get(DLQ_HEADER_PREFIX + "reason", "?")
            out.append((dead_letter_topic(topic), key, reason))
    return out


def read_embed_done(settings: Settings) -> list[dict[str, Any]]:
    return [v for _, v in asyncio.run(_topic(settings, topic_name(settings, "embed-done")))]


def record_times(settings: Settings, topic: str) -> list[int]:
    """Kafka timestamps (ms) of every record of `topic`, sorted."""
    return sorted(
        r.timestamp for r, _ in asyncio.run(_topic(settings, topic_name(settings, topic)))
    )


def check(
    settings: Settings,
    expected_dlq: frozenset[str] = frozenset(),
    also: tuple[str, ...] = (),
    documents: Mapping[tuple[str, str], str | None] | None = None,
) -> CheckReport:
    """The configured collections, plus `also` (e.g. a completed backfill's target, which live
    traffic keeps writing; its embed-done records are not required). With `documents` (the
    load's final state), the chunk topic itself is checked against them first."""
    live = read_live(settings)
    collections = [settings.collection_for(spec) for spec in settings.target_models]
    report = CheckReport(live_chunks=len(live))
    if documents is not None:
        report.lost, report.duplicated = compare_topic(chunks_of(settings, documents), live)
    by_tenant: dict[str, set[str]] = {}
    for key in live:
        by_tenant.setdefault(key.split("/", 1)[0], set()).add(key)
    for collection in [*collections, *also]:
        objects = read_objects(settings, collection)
        report.collections[collection] = sum(len(o) for o in objects.values())
        for tenant in sorted(set(by_tenant) | set(objects)):
            lost, duplicated = compare_objects(
                collection,
                {k: live[k] for k in by_tenant.get(tenant, set())},
                objects.get(tenant, {}),
            )
            report.lost += lost
            report.duplicated += duplicated
    report.missing_done = missing_embed_done(live.values(), read_embed_done(settings), collections)
    report.dead_lettered = unexpected_dead_letters(read_dead_letters(settings), expected_dlq)
    return report
