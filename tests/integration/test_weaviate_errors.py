"""Weaviate's refusals, for real: classified, dead-lettered, waited out or skipped as they should.

Each case injects the fault in Weaviate itself: a property of the wrong type, a shard set
read-only, a collection dropped under a live embedder, a server restarted under reads and writes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from streamproc.chunking.tokenizers import splitter_for
from streamproc.errors import ConfigurationError, TransientError
from streamproc.localservices.weaviate import LocalWeaviate
from streamproc.models import EmbeddingModel, load_model
from streamproc.naming import CONTENT_VECTOR, HEADING_VECTOR, collection_name, object_uuid
from streamproc.pipeline.chunker import Chunker
from streamproc.pipeline.embedder import BatchResult, Embedder
from streamproc.pipeline.lanes import Lane
from streamproc.pipeline.objects import Target
from streamproc.settings import Settings
from streamproc.weaviate_client import connect
from streamproc.weaviate_errors import UNRULED, Verdict, error_verdict
from streamproc.weaviate_schema import ChunkObject, WriteResult
from streamproc.weaviate_store import WeaviateStore
from streamproc.worker.embedder import background_pacing
from tests.pipeline_support import event, private_weaviate

# What must never reach a log record: the chunks' text and headings.
SECRET = "Zanzibar-7741"
# Checked against every log of the run (tests/conftest.py).
NEVER_LOGGED = (SECRET,)
DOCUMENT = (
    f"# Heading {SECRET}\n\nFirst paragraph {SECRET} about one thing.\n\n"
    f"# Second {SECRET}\n\nSecond paragraph {SECRET} about another thing."
)
# Well past the first few backoff steps; far from "retried forever".
PROMPT_S = 30


def _requests(settings: Settings, doc_id: str, op: str = "UPSERT") -> list[dict[str, Any]]:
    chunker = Chunker(settings.chunking, splitter_for(settings))
    upsert = event("acme", doc_id, DOCUMENT)
    upsert.update(op="UPSERT", content_uri=None, content_sha256=None, metadata={}, ingested_at=None)
    first = chunker.process(upsert, None, datetime.now(UTC))
    if op == "UPSERT":
        return first.embed_requests
    return chunker.process(
        {**upsert, "op": "DELETE"}, first.state, datetime.now(UTC)
    ).embed_requests


def _with_bad_chunk_index(request: dict[str, Any]) -> dict[str, Any]:
    return {**request, "chunk": {**request["chunk"], "chunk_index": "not a number"}}


def _embedder(settings: Settings, store: WeaviateStore, model: EmbeddingModel) -> Embedder:
    target = Target(model, settings.collection_for(model.spec))
    store.ensure_collection(target.collection, model.dimension)
    return Embedder([target], store, settings.embedder, background_pacing(settings))


def _handle(embedder: Embedder, requests: list[dict[str, Any]], **kwargs: Any) -> BatchResult:
    return asyncio.run(asyncio.wait_for(embedder.handle(requests, **kwargs), PROMPT_S))


def test_a_one_chunk_update_with_a_bad_property_goes_to_the_dlq_at_once(settings: Settings) -> None:
    """Old code: every object of the request rejected, so it was retried forever."""
    model = load_model(settings.model(settings.active_model), "cpu")
    request = _with_bad_chunk_index(_requests(settings, "bad")[0])
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        embedder = _embedder(settings, store, model)
        try:
            started = time.monotonic()
            result = _handle(embedder, [request])
        finally:
            embedder.close()
        assert time.monotonic() - started < 5
        assert result.done == []
        assert list(result.failed) == [0]
        assert "chunk_index" in result.failed[0]
        uuid = object_uuid(request["chunk_key"])
        assert uuid not in store.uuids(embedder.targets[0].collection, "acme")


def test_a_partial_failure_writes_the_rest_and_logs_no_document_text(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Old code: weaviate-client logged the failed object (text, headings, vectors) at ERROR."""
    model = load_model(settings.model(settings.active_model), "cpu")
    good, bad = _requests(settings, "partial")[:2]
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        embedder = _embedder(settings, store, model)
        try:
            with caplog.at_level(logging.DEBUG):
                result = _handle(embedder, [good, _with_bad_chunk_index(bad)])
        finally:
            embedder.close()
        collection = embedder.targets[0].collection
        assert [(d["chunk_key"], d["status"]) for d in result.done] == [
            (good["chunk_key"], "EMBEDDED")
        ]
        assert list(result.failed) == [1]
        assert store.uuids(collection, "acme") == {object_uuid(good["chunk_key"])}
    client_records = [r for r in caplog.records if r.name == "weaviate-client"]
    assert any("Failed to send 1 objects" in r.getMessage() for r in client_records)
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.name
        assert SECRET not in repr(record.__dict__), record.name


def test_a_read_only_shard_is_waited_out_and_a_delete_is_confirmed(settings: Settings) -> None:
    """Old code: a delete refused by a read-only shard was reported DELETED all the same."""
    model = load_model(settings.model(settings.active_model), "cpu")
    upserts = _requests(settings, "ro")
    deletes = _requests(settings, "ro", op="DELETE")
    keys = {r["chunk_key"] for r in upserts}
    assert keys == {r["chunk_key"] for r in deletes}
    with connect(settings.weaviate) as client, connect(settings.weaviate) as admin:
        store = WeaviateStore(client)
        embedder = _embedder(settings, store, model)
        collection = embedder.targets[0].collection
        shards = admin.collections.get(collection).config

        async def refused_then_allowed(requests: list[dict[str, Any]]) -> BatchResult:
            shards.update_shards(status="READONLY", shard_names="acme")
            task = asyncio.ensure_future(embedder.handle(requests))
            await asyncio.sleep(3)
            # Still retrying: neither done nor dead-lettered while the shard refuses.
            assert not task.done()
            shards.update_shards(status="READY", shard_names="acme")
            return await asyncio.wait_for(task, PROMPT_S)

        try:
            # The tenant's shard exists before it can be set read-only.
            _handle(embedder, upserts[:1])
            written = asyncio.run(refused_then_allowed(upserts))
            assert {d["chunk_key"] for d in written.done if d["status"] == "EMBEDDED"} == keys
            assert store.uuids(collection, "acme") == {object_uuid(k) for k in keys}
            deleted = asyncio.run(refused_then_allowed(deletes))
        finally:
            shards.update_shards(status="READY", shard_names="acme")
            embedder.close()
        assert written.failed == {} and deleted.failed == {}
        assert {d["chunk_key"] for d in deleted.done if d["status"] == "DELETED"} == keys
        assert store.uuids(collection, "acme") == set()


def test_a_dropped_collection_is_skipped_as_a_backfill_target_and_stops_a_configured_one(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Old code: every write to a dropped collection failed and was retried forever."""
    model = load_model(settings.model(settings.active_model), "cpu")
    batch = _requests(settings, "kept") + _requests(settings, "gone", op="DELETE")
    retired = collection_name(settings.weaviate.collection_prefix, "retired", "v1")
    with connect(settings.weaviate) as client:
        store = WeaviateStore(client)
        embedder = _embedder(settings, store, model)
        configured = embedder.targets[0]
        store.ensure_collection(retired, model.dimension)
        backfill = Target(model, retired)
        try:
            # A live batch resolved the backfill target; `collections retire` drops it meanwhile.
            _handle(embedder, batch[:1], targets=[backfill], lane=Lane.LIVE_BACKFILL)
            store.drop(retired)
            with caplog.at_level(logging.INFO):
                for _ in range(2):
                    skipped = _handle(embedder, batch, targets=[backfill], lane=Lane.LIVE_BACKFILL)
                    assert skipped.done == [] and skipped.failed == {}
                replayed = _handle(embedder, batch, targets=[backfill], lane=Lane.REPLAY)
                assert replayed.done == [] and replayed.failed == {}
            missing = [r for r in caplog.records if r.getMessage().startswith("collection missing")]
            assert [getattr(r, "collection", None) for r in missing] == [retired]

            # The configured collection is written as before, then dropped: the worker stops.
            written = _handle(embedder, batch)
            assert {d["collection"] for d in written.done} == {configured.collection}
            store.drop(configured.collection)
            with pytest.raises(ConfigurationError, match=configured.collection):
                _handle(embedder, batch)
        finally:
            embedder.close()


# A restarted node's answers while it serves before its Raft election and while it reloads
# its indexes (not a refused connection).
STARTING_UP = re.compile(
    r"no read replica found|resolve node name|browse non-existing index|not found locally"
    r"|cannot find index for class"
)
RESTARTS = 4


def test_a_restarting_weaviate_is_only_ever_transient(settings: Settings) -> None:
    """Old code: in the seconds a restarted node serves before it knows its cluster membership,
    a read's "no read replica found" ended the embedder (CI, service-outages case) and a write's
    "resolve node name" failed each object for good, so it was dead-lettered; while it reloads
    its indexes, a read's "tried to browse non-existing index" and a delete's "cannot find index
    for class" ended the embedder (CI again, twice). The store's grace while Weaviate comes back
    would now wait out such a message even without its rule: the test asks for the rule."""
    with private_weaviate(settings, "restart") as private:
        weaviate = LocalWeaviate(private)
        collection = collection_name(private.weaviate.collection_prefix, "restart", "v1")
        vector = [0.5, 0.5, 0.5, 0.5]
        objects = [
            ChunkObject(
                object_uuid(f"acme/restart/{i}"),
                "acme",
                {"text_sha256": f"sha-{i}"},
                {CONTENT_VECTOR: vector, HEADING_VECTOR: vector},
            )
            for i in range(8)
        ]
        absent = [object_uuid(f"acme/restart/absent/{i}") for i in range(4)]
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def note_objects(result: WriteResult) -> None:
            outcomes.update("failed for good: " + m for m in result.failed.values())
            # The store's own rules made these transient; only the grace marks its own.
            outcomes.update(
                _outcome(m, None if m.startswith(UNRULED) else Verdict.TRANSIENT)
                for m in result.retry.values()
            )

        calls = {
            "read": lambda: store.held(collection, "acme", [o.uuid for o in objects]),
            "write": lambda: note_objects(store.upsert(collection, objects)),
            "delete": lambda: note_objects(store.delete(collection, "acme", absent)),
        }

        def hammer(call: Callable[[], object]) -> None:
            while not stop.is_set():
                try:
                    call()
                    outcomes["ok"] += 1
                except TransientError as exc:
                    cause = exc.__cause__
                    verdict = Verdict.TRANSIENT if cause is None else error_verdict(cause)
                    outcomes[_outcome(str(cause or exc), verdict)] += 1
                    time.sleep(0.01)
                except Exception as exc:
                    outcomes[f"unexpected: {type(exc).__name__}: {exc}"] += 1
                    time.sleep(0.01)

        with connect(private.weaviate) as client:
            store = WeaviateStore(client)
            store.ensure_collection(collection, len(vector))
            assert store.upsert(collection, objects).written
            # Two of each: the index-reload window lasts milliseconds.
            threads = [threading.Thread(target=hammer, args=(c,)) for c in [*calls.values()] * 2]
            for thread in threads:
                thread.start()
            try:
                for _ in range(RESTARTS):
                    weaviate.proc.stop()
                    weaviate.start()
                    time.sleep(2)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            held = store.held(collection, "acme", [o.uuid for o in objects])

        wrong = {
            k: n for k, n in outcomes.items() if k.startswith(("failed", "unexpected", "no rule"))
        }
        assert wrong == {}, outcomes
        # The window was really hit, and nothing was lost through it.
        assert outcomes["starting up"] > 0, outcomes
        assert {u: sha for u, (_, sha) in held.items()} == {
            o.uuid: o.properties["text_sha256"] for o in objects
        }


def _outcome(message: str, verdict: Verdict | None) -> str:
    """Which of the restart's answers `message` is; one that only the store's grace while
    Weaviate comes back made transient has no rule of its own."""
    if STARTING_UP.search(message):
        return "starting up"
    if verdict is None:
        return f"no rule: {message}"
    return "retry"
