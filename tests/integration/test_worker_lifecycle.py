"""Workers that crash, restart or refuse to start, with real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from streamproc.derive import projected_model
from streamproc.registry import ModelSpec
from streamproc.settings import Settings
from streamproc.verify import verify_collection
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.runner import worker_subprocess
from tests.conftest import with_topics
from tests.pipeline_support import (
    CORPUS,
    Workers,
    collect,
    embed_done_keys,
    event,
    expected_chunks,
    produce_events,
    running_workers,
)


def _embedded(values: list[object], tenant: str) -> list[dict[str, object]]:
    """EMBEDDED records that wrote something (not those reporting a chunk already current)."""
    return [
        v
        for _, v in values
        if isinstance(v, dict)
        and v.get("tenant") == tenant
        and v.get("status") == "EMBEDDED"
        and not v.get("unchanged")
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
    _, reports = asyncio.run(verify_collection(slow_commit, collection))
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
        from streamproc.naming import CONTENT_VECTOR, object_uuid
        from streamproc.weaviate_schema import ChunkObject

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


def _children(parent: psutil.Process, role: str) -> list[psutil.Process]:
    return [
        c
        for c in parent.children()
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE and role in c.cmdline()
    ]


def _wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)
    return value


def _json_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def test_the_supervisor_restarts_a_killed_child_alone_and_it_resumes_quickly(
    settings: Settings, tmp_path: Path
) -> None:
    with_topics(settings)
    log = tmp_path / "worker.log"
    collection = settings.collection_for(settings.target_models[0])
    with worker_subprocess(settings, "all", log) as parent_proc:
        parent = psutil.Process(parent_proc.pid)
        produce_events(settings, [event("sup", "first", "# First\n\nBefore the kill.")])
        embed_done_keys(settings, collection, {"sup/first/p1/0"})
        chunker = _wait_for(lambda: _children(parent, "chunker"), 30, "chunker child")[0]
        embedder = _wait_for(lambda: _children(parent, "embedder"), 30, "embedder child")[0]
        embedder.kill()
        killed_at = time.time()
        produce_events(settings, [event("sup", "second", "# Second\n\nAfter the kill.")])
        second = collect(
            settings,
            "embed-done",
            lambda vs: any(v.get("chunk_key") == "sup/second/p1/0" for _, v in vs),
            timeout=180,
        )
        done_at = next(r.timestamp for r, v in second if v["chunk_key"] == "sup/second/p1/0")
        restarted = _wait_for(lambda: _children(parent, "embedder"), 30, "embedder restarted")
        assert restarted[0].pid != embedder.pid
        # The other role was left alone.
        assert chunker.is_running() and _children(parent, "chunker")[0].pid == chunker.pid
        assert parent_proc.poll() is None
    lines = _json_lines(log)
    died = [r for r in lines if r.get("msg") == "worker died, restarting it"]
    assert died and died[0]["role"] == "embedder" and died[0]["why"] == "killed by SIGKILL"
    # From the kill to the restarted child's first embed-done (model load included); the fault
    # suite's table reports it, here only a generous bound.
    assert done_at / 1000 - killed_at < 60


def test_the_supervisor_gives_up_after_repeated_crashes_and_says_why(
    settings: Settings, tmp_path: Path
) -> None:
    with_topics(settings)
    # The embedder cannot reach Weaviate, so each start fails.
    broken = settings.model_copy(
        update={
            "weaviate": settings.weaviate.model_copy(update={"http_port": 1, "grpc_port": 2}),
            "worker": settings.worker.model_copy(update={"max_crashes": 2}),
        }
    )
    log = tmp_path / "worker.log"
    with worker_subprocess(broken, "all", log) as parent:
        code = parent.wait(timeout=240)
    assert code != 0
    lines = _json_lines(log)
    assert [r["role"] for r in lines if r.get("msg") == "worker died, restarting it"] == [
        "embedder"
    ]
    gave_up = [r for r in lines if r.get("msg") == "worker died too often, stopping"]
    assert gave_up and gave_up[0]["role"] == "embedder"
