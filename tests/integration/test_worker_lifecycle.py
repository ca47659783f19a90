"""Workers that crash, restart or refuse to start, with real processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from streamproc.derive import projected_model
from streamproc.settings import ModelSpec, Settings
from streamproc.verify import verify_collection
from streamproc.weaviate_store import WeaviateStore, connect
from tests.conftest import with_topics
from tests.pipeline_support import (
    CORPUS,
    Workers,
    collect,
    event,
    expected_chunks,
    produce_events,
    running_workers,
)


def _embedded(values: list[object], tenant: str) -> list[dict[str, object]]:
    return [
        v
        for _, v in values
        if isinstance(v, dict) and v.get("tenant") == tenant and v.get("status") == "EMBEDDED"
    ]


def test_redelivery_and_a_killed_worker_leave_no_duplicates(
    settings: Settings, tmp_path: Path
) -> None:
    # Offsets commit only every 120 s here, so a SIGKILL lands before any commit.
    slow_commit = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"commit_interval_s": 120.0})}
    )
    with_topics(slow_commit)
    text = (CORPUS / "go_mem.html").read_text()
    collection = slow_commit.collection_for(slow_commit.target_models[0])
    expected = len(expected_chunks(slow_commit, text, "text/html"))
    with running_workers(slow_commit, tmp_path) as workers:
        same = event("redo", "go_mem", text, content_type="text/html")
        produce_events(slow_commit, [same, same])  # the same event produced twice
        first = collect(
            slow_commit, "embed-done", lambda vs: len(_embedded(vs, "redo")) >= expected
        )
        assert len(_embedded(first, "redo")) == expected  # the second event changed nothing
        workers.kill("embedder")
        workers.start("embedder")
        # The restarted embedder gets the uncommitted batch again and writes it again.
        values = collect(
            slow_commit,
            "embed-done",
            lambda vs: len(_embedded(vs, "redo")) >= 2 * expected,
            timeout=180,
        )
        assert len(_embedded(values, "redo")) >= 2 * expected
    with connect(slow_commit.weaviate) as client:
        assert WeaviateStore(client).count(collection, "redo") == expected
    _, reports = verify_collection(slow_commit, collection)
    assert [r for r in reports if not r.ok] == []


def _start_fails(settings: Settings, tmp_path: Path) -> str:
    workers = Workers(settings, tmp_path)
    proc = workers.start("embedder")
    try:
        code = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        workers.stop()
        raise AssertionError("the embedder started despite the mismatch") from None
    workers.stop()
    assert code != 0
    return workers.log("embedder")


def test_registry_dimension_mismatch_stops_the_worker_with_the_fix(
    settings: Settings, tmp_path: Path
) -> None:
    wrong = settings.model_copy(
        update={
            "models": [settings.model(settings.active_model).model_copy(update={"dimension": 512})]
        }
    )
    with_topics(wrong)
    log = _start_fails(wrong, tmp_path)
    assert "produces 384-dimensional vectors but the registry says 512" in log
    assert "set dimension=384" in log


def test_collection_dimension_mismatch_stops_the_worker_with_the_fix(
    settings: Settings, tmp_path: Path
) -> None:
    with_topics(settings)
    collection = settings.collection_for(settings.target_models[0])
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        store.ensure_collection(collection, 384)
        from streamproc.naming import object_uuid
        from streamproc.weaviate_store import CONTENT_VECTOR, ChunkObject

        store.upsert(
            collection,
            [
                ChunkObject(
                    object_uuid("t/d/p1/0"), "t", {"doc_id": "d"}, {CONTENT_VECTOR: [0.1] * 384}
                )
            ],
        )
    # Same name and version, but now pointing at a 128-dimensional model.
    projected = projected_model(settings.local.cache_dir)
    swapped: ModelSpec = settings.model(settings.active_model).model_copy(
        update={"source": projected.source, "dimension": projected.dimension}
    )
    log = _start_fails(settings.model_copy(update={"models": [swapped]}), tmp_path)
    assert f"collection {collection} holds 384-dimensional vectors but the model gives 128" in log
    assert "new version" in log
