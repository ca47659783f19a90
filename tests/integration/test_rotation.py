"""Model rotation against real Kafka and Weaviate with two real models of different dimension:
a backfill under live inserts, updates and deletes, the verified flip, rollback, a refused flip."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import numpy as np
import pytest

from streamproc.avro_codec import load_schemas
from streamproc.backfill.alias import VerificationFailed, history, rollback, verify_and_promote
from streamproc.backfill.commands import start_job, wait_for
from streamproc.derive import projected_model
from streamproc.kafka_io import live_chunks
from streamproc.naming import CONTENT_VECTOR, object_uuid
from streamproc.search import search_alias
from streamproc.settings import Settings
from streamproc.verify import verify_collection
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from tests.conftest import with_topics
from tests.pipeline_support import (
    assert_tenants_isolated,
    corpus_events,
    drained,
    event,
    produce_events,
    running_workers,
)

TENANTS = ("acme", "globex")
QUERY = "What must a licensee do when redistributing the work?"


def snapshot(settings: Settings, collection: str) -> dict[UUID, tuple[list[float], Any, str]]:
    """uuid -> (content vector, embedded_at, text_sha256) of every object, all tenants."""
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        found = {}
        for tenant in store.tenants(collection):
            for obj in store.collection(collection, tenant).iterator(
                include_vector=[CONTENT_VECTOR],
                return_properties=["embedded_at", "text_sha256"],
            ):
                found[obj.uuid] = (
                    list(obj.vector[CONTENT_VECTOR]),
                    obj.properties["embedded_at"],
                    obj.properties["text_sha256"],
                )
        return found


def live_hashes(settings: Settings) -> dict[UUID, str]:
    codec = load_schemas(settings.schemas_dir).codec("ChunkRecord")
    return {
        object_uuid(key): codec.decode(value)["text_sha256"]
        for key, value in asyncio.run(live_chunks(settings)).items()
    }


@pytest.fixture(scope="module")
def rotation(
    service_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    inference_endpoint: Settings,
) -> Iterator[Settings]:
    base = tmp_path_factory.mktemp("rotation")
    second = projected_model(service_settings.local.cache_dir)
    settings = service_settings.isolated(base / "worker", models=[*service_settings.models, second])
    with_topics(settings)
    with running_workers(settings, base) as workers:
        produce_events(settings, [e for t in TENANTS for e in corpus_events(t)])
        drained(settings)
        yield settings
        assert all(p.poll() is None for p in workers.procs.values()), "a worker died"


def test_rotation_under_live_traffic_then_flip_and_rollback(rotation: Settings) -> None:
    settings = rotation
    old = settings.collection_for(settings.model(settings.active_model))
    new = settings.collection_for(settings.model("minilm-pca128"))
    before = snapshot(settings, old)
    assert before

    job_id = asyncio.run(start_job(settings, "minilm-pca128"))
    asyncio.run(wait_for(settings, job_id, lambda j: j["state"] == "RUNNING", 120))
    # Live traffic during the replay: a new document, a changed one, a deleted one, per tenant.
    touched = {"gpl-3.0", "go_mem", "added"}
    live = []
    for tenant in TENANTS:
        live.append(event(tenant, "added", "# Added\n\nA document that arrived mid-replay."))
        live.append(event(tenant, "go_mem", "# Rewritten\n\nThe model was replaced."))
        live.append(event(tenant, "gpl-3.0", None, op="DELETE"))
    produce_events(settings, live)
    job = asyncio.run(
        wait_for(settings, job_id, lambda j: j["state"] in ("COMPLETED", "FAILED"), 600)
    )
    assert job["state"] == "COMPLETED", job["error"]
    drained(settings)

    # Object by object, the new collection holds exactly the chunk topic's live set.
    _, reports = asyncio.run(verify_collection(settings, new))
    assert [r.tenant for r in reports] == sorted(TENANTS)
    assert all(r.ok for r in reports), reports
    after = snapshot(settings, new)
    hashes = live_hashes(settings)
    assert {str(u): h for u, (_, _, h) in after.items()} == {str(u): h for u, h in hashes.items()}
    assert all(len(vector) == 128 for vector, _, _ in after.values())

    # The backfill never wrote the serving collection: every object live traffic did not
    # touch has the very vector and embedded_at it had before the job.
    served_now = snapshot(settings, old)
    codec = load_schemas(settings.schemas_dir).codec("ChunkRecord")
    untouched_docs = {
        object_uuid(k)
        for k, v in asyncio.run(live_chunks(settings)).items()
        if codec.decode(v)["doc_id"] not in touched
    }
    assert untouched_docs
    for uuid in untouched_docs:
        assert np.array_equal(served_now[uuid][0], before[uuid][0])
        assert served_now[uuid][1] == before[uuid][1]

    # Verified flip: searches through the alias now use the new model.
    report, previous = asyncio.run(verify_and_promote(settings, new))
    assert previous == old
    assert report.ok and any(c.name == "self-retrieval" for c in report.checks)
    result = search_alias(settings, QUERY, "acme", 3)
    assert result.collection == new and result.model.startswith("minilm-pca128")
    assert result.hits and result.hits[0].doc_id == "apache-license-2.0"
    # Both tenants hold the same corpus: after the flip a search still sees only its own.
    assert_tenants_isolated(settings, TENANTS, QUERY)

    # Rollback: the previous collection and the previous model again.
    assert asyncio.run(rollback(settings)) == (new, old)
    result = search_alias(settings, QUERY, "acme", 3)
    assert result.collection == old and result.model.startswith("all-minilm-l6-v2")
    assert result.hits and result.hits[0].doc_id == "apache-license-2.0"


def test_a_failing_verification_refuses_the_flip(rotation: Settings) -> None:
    settings = rotation
    old = settings.collection_for(settings.model(settings.active_model))
    new = settings.collection_for(settings.model("minilm-pca128"))
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        assert store.alias_target(settings.weaviate.collection_prefix) == old
        # Objects deleted behind the target's back.
        doomed = sorted(store.uuids(new, "globex"))[:3]
        store.delete(new, "globex", doomed)
    with pytest.raises(VerificationFailed, match=r"keys\[globex\]: STALE: .* 3 missing") as refused:
        asyncio.run(verify_and_promote(settings, new))
    # The sample of live chunks may or may not include one of the three.
    assert {c.name for c in refused.value.report.failures} - {"content"} == {"keys[globex]"}
    with connect(settings.weaviate) as client:
        assert WeaviateStore(client).alias_target(settings.weaviate.collection_prefix) == old


def test_a_job_with_auto_promote_flips_the_alias_once_verified(rotation: Settings) -> None:
    """The replay heals what the test before broke, verifies the collection and points the
    alias at it from the worker, the flip recorded for `alias rollback`."""
    settings = rotation
    old = settings.collection_for(settings.model(settings.active_model))
    new = settings.collection_for(settings.model("minilm-pca128"))
    job_id = asyncio.run(start_job(settings, "minilm-pca128", auto_promote=True))
    job = asyncio.run(wait_for(settings, job_id, lambda j: j["verification"] is not None, 600))
    assert job["state"] == "COMPLETED", job["error"]
    assert job["verification"].startswith(f"promoted (alias was {old})"), job["verification"]
    with connect(settings.weaviate) as client:
        assert WeaviateStore(client).alias_target(settings.weaviate.collection_prefix) == new
    flip = asyncio.run(history(settings))[-1]
    assert (flip["previous"], flip["current"], flip["action"]) == (old, new, "PROMOTE")
    assert asyncio.run(rollback(settings)) == (new, old)
