"""Model rotation under faults, with real workers, Kafka and Weaviate: chunks deleted live while
a replay still holds them, stale objects in a candidate collection, a tenant-scoped backfill's
flip, and a retire while embedders and a replay still write the collection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from streamproc.avro_codec import load_schemas
from streamproc.backfill.alias import (
    VerificationFailed,
    list_collections,
    retire,
    rollback,
    verify_and_promote,
)
from streamproc.backfill.commands import retire_acks, start_job, wait_for
from streamproc.backfill.verification import sample_keys
from streamproc.derive import projected_model
from streamproc.kafka_io import live_chunks
from streamproc.naming import object_uuid
from streamproc.settings import Settings
from streamproc.verify import compare_collection, live_hashes, verify_collection
from streamproc.weaviate_client import connect
from streamproc.weaviate_schema import ChunkObject
from streamproc.weaviate_store import WeaviateStore
from tests.conftest import with_topics
from tests.pipeline_support import (
    Workers,
    collect,
    corpus_events,
    drained,
    event,
    exact,
    produce_events,
)

TENANTS = ("acme", "globex")
EXACT = {"missing": [], "stale": [], "extra": []}


@pytest.fixture(scope="module")
def faults(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Workers]]:
    base = tmp_path_factory.mktemp("rotation-faults")
    second = projected_model(service_settings.local.cache_dir)
    others = [second.model_copy(update={"name": f"minilm-pca128{s}"}) for s in ("b", "c")]
    settings = service_settings.isolated(
        base / "worker",
        models=[*service_settings.models, second, *others],
        # Small batches: a replay runs long enough for live deletes to overtake it. These
        # flips are about keys and hashes, on a corpus cut down behind the pipeline's back:
        # the retrieval quality gate is tested in test_quality_gate.py.
        backfill={
            **service_settings.backfill.model_dump(),
            "batch_size": 8,
            "max_recall_drop": 1.0,
        },
    )
    with_topics(settings)
    workers = Workers(settings, base)
    workers.start("chunker")
    workers.start("embedder")
    try:
        produce_events(settings, [e for t in TENANTS for e in corpus_events(t)])
        drained(settings)
        yield settings, workers
        assert all(p.poll() is None for p in workers.procs.values()), "a worker died"
    finally:
        workers.stop()


def collection(settings: Settings, model: str) -> str:
    return settings.collection_for(settings.model(model))


def rewrite(settings: Settings, name: str, key: str, new_key: str | None = None, **props: Any):
    """Write the object of `key` again, under `new_key` if given, with `props` changed: a
    stale or misplaced version put behind the pipeline's back."""
    tenant = key.split("/", 1)[0]
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        found = store.collection(name, tenant).query.fetch_object_by_id(
            object_uuid(key), include_vector=True
        )
        assert found is not None, key
        properties = {**found.properties, **props}
        uuid = object_uuid(new_key or key)
        if new_key is not None:
            properties["chunk_key"] = new_key
            store.delete(name, tenant, [object_uuid(key)])
        result = store.upsert(name, [ChunkObject(uuid, tenant, properties, dict(found.vector))])
        assert not result.failed, result.failed


def test_live_deletes_during_a_replay_stay_deleted_and_stale_objects_refuse_the_flip(
    faults: tuple[Settings, Workers],
) -> None:
    settings, _ = faults
    new = collection(settings, "minilm-pca128")
    job_id = asyncio.run(start_job(settings, "minilm-pca128"))
    asyncio.run(wait_for(settings, job_id, lambda j: j["items_total"] > 0, 120))
    # Deleted (and one rewritten) while the replay still has their old records ahead of it:
    # the replay writes them back, only a catch-up pass over the tombstones removes them.
    live = []
    for tenant in TENANTS:
        live += [
            event(tenant, "asm", None, op="DELETE"),
            event(tenant, "godebug", None, op="DELETE"),
        ]
        live.append(event(tenant, "go_mem", "# Rewritten\n\nDuring the replay."))
    produce_events(settings, live)
    job = asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] in ("COMPLETED", "FAILED"), 600)
    )
    assert job["state"] == "COMPLETED", job["error"]
    drained(settings)
    assert exact(settings, new) == EXACT

    report, _ = asyncio.run(verify_and_promote(settings, new))
    assert [c.name for c in report.checks] == [
        "live writes",
        "keys[acme]",
        "keys[globex]",
        "content",
        "dimension",
        "self-retrieval",
        "retrieval quality",
    ]
    asyncio.run(rollback(settings))

    # Same object count as the chunk topic's live keys, yet wrong: a sampled chunk held in an
    # older version, and one chunk moved under a key with no live chunk.
    codec = load_schemas(settings.schemas_dir).codec("ChunkRecord")
    records = {k: codec.decode(v) for k, v in asyncio.run(live_chunks(settings)).items()}
    sampled = sample_keys(new, records, settings.backfill.verify_sample_size)
    old = next(k for k in sampled if k.startswith("acme/"))
    rewrite(
        settings,
        new,
        old,
        text_sha256="0" * 64,
        ingested_at=records[old]["ingested_at"] - timedelta(hours=1),
    )
    moved = next(k for k in sorted(records) if k.startswith("globex/") and k not in sampled)
    rewrite(settings, new, moved, new_key="globex/ghost/p1/0")

    with pytest.raises(VerificationFailed) as refused:
        asyncio.run(verify_and_promote(settings, new))
    failures = {c.name: c.detail for c in refused.value.report.failures}
    assert set(failures) == {"keys[acme]", "keys[globex]", "content"}, failures
    assert f"stale e.g. {old}" in failures["keys[acme]"]
    assert f"missing e.g. {moved}" in failures["keys[globex]"]
    assert "unexpected e.g. globex/ghost/p1/0" in failures["keys[globex]"]
    assert old in failures["content"]
    with connect(settings.weaviate) as client:
        alias = WeaviateStore(client).alias_target(settings.weaviate.collection_prefix)
    assert alias == collection(settings, settings.active_model)

    # `verify` and `collections list` say the same, by key and hash.
    _, reports = asyncio.run(verify_collection(settings, new))
    assert {r.tenant: (r.missing, r.unexpected, r.stale) for r in reports} == {
        "acme": ([], [], [old]),
        "globex": ([moved], ["globex/ghost/p1/0"], []),
    }
    infos = {i.name: i for i in asyncio.run(list_collections(settings))}
    assert infos[new].freshness.startswith("STALE (") and old in infos[new].freshness
    assert infos[collection(settings, settings.active_model)].freshness == "fresh"


def test_a_tenant_scoped_backfill_passes_the_flip(faults: tuple[Settings, Workers]) -> None:
    settings, _ = faults
    new = collection(settings, "minilm-pca128b")
    job_id = asyncio.run(start_job(settings, "minilm-pca128b", tenant="acme"))
    asyncio.run(wait_for(settings, job_id, lambda j: j["state"] == "RUNNING", 120))
    # Live traffic of both tenants while the job runs and after it completed.
    produce_events(settings, [event(t, "scoped-1", "# One\n\nDuring the replay.") for t in TENANTS])
    job = asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] in ("COMPLETED", "FAILED"), 600)
    )
    assert job["state"] == "COMPLETED", job["error"]
    produce_events(settings, [event(t, "scoped-2", "# Two\n\nAfter the replay.") for t in TENANTS])
    drained(settings)

    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        assert store.tenants(new) == ["acme"]
        (report,) = compare_collection(store, new, asyncio.run(live_hashes(settings)), "acme")
    assert report.ok and report.expected > 0, report.detail()
    infos = {i.name: i for i in asyncio.run(list_collections(settings))}
    assert infos[new].freshness == "fresh", infos[new]

    verified, _ = asyncio.run(verify_and_promote(settings, new))
    assert [c.name for c in verified.checks if c.name.startswith("keys")] == ["keys[acme]"]
    asyncio.run(rollback(settings))


def test_retire_waits_until_no_embedder_writes_the_collection(
    faults: tuple[Settings, Workers],
) -> None:
    settings, workers = faults
    served = collection(settings, settings.active_model)
    doomed = collection(settings, "minilm-pca128")
    # Enough chunks that their writes to the backfill targets, behind the configured
    # collection's, are still running when the retire comes.
    produce_events(settings, corpus_events("acme", "-big") + corpus_events("globex", "-big"))
    collect(
        settings,
        "embed-done",
        lambda values: any(
            isinstance(v, dict) and v.get("collection") == served and "-big" in v["doc_id"]
            for _, v in values
        ),
        timeout=300,
    )
    started = time.monotonic()
    asyncio.run(retire(settings, doomed, timeout_s=300))
    took = time.monotonic() - started

    drained(settings, 300)
    with connect(settings.weaviate) as client:
        assert not client.collections.exists(doomed)
    assert exact(settings, served) == EXACT
    assert asyncio.run(retire_acks(settings, doomed)), "no embedder acknowledged"
    assert all(p.poll() is None for p in workers.procs.values()), "a worker died"
    assert "backfill target missing" not in workers.log("embedder")
    assert took < 300
    assert doomed not in {i.name for i in asyncio.run(list_collections(settings))}


def test_retire_stops_a_running_replay_and_frees_its_slot(
    faults: tuple[Settings, Workers],
) -> None:
    settings, _ = faults
    target = collection(settings, "minilm-pca128c")
    job_id = asyncio.run(start_job(settings, "minilm-pca128c"))
    asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] == "RUNNING" and j["items_done"] > 0, 300)
    )
    asyncio.run(retire(settings, target, timeout_s=120))
    stopped = asyncio.run(wait_for(settings, job_id, lambda j: j["retired"], 10))
    assert stopped["state"] == "CANCELLED"
    with connect(settings.weaviate) as client:
        assert not client.collections.exists(target)

    # The slot is free: the next job runs and completes.
    again = asyncio.run(start_job(settings, "minilm-pca128c"))
    job = asyncio.run(
        wait_for(settings, again, lambda j: j["state"] in ("COMPLETED", "FAILED"), 600)
    )
    assert job["state"] == "COMPLETED", job["error"]
    drained(settings)
    assert exact(settings, target) == EXACT
