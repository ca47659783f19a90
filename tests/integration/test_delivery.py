"""The delivery contract under failures injected into real worker processes: nothing acked
before its work is confirmed, transient failures retried in place, bad input dead-lettered."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamproc.avro_codec import load_schemas
from streamproc.delivery import CRASH_EXIT_CODE
from streamproc.kafka_io import live_chunks
from streamproc.naming import object_uuid
from streamproc.settings import Settings
from streamproc.weaviate_client import connect
from streamproc.weaviate_store import WeaviateStore
from tests.conftest import with_topics
from tests.pipeline_support import (
    Workers,
    collect,
    corpus_events,
    drained,
    embed_done_keys,
    event,
    exact,
    expected_chunks,
    produce_events,
    produce_raw,
    records_to_end,
    records_with_headers,
    running_workers,
)

pytestmark = pytest.mark.integration

EXACT = {"missing": [], "stale": [], "extra": []}


def _small_batches(settings: Settings) -> Settings:
    return with_topics(
        settings.model_copy(
            update={"embedder": settings.embedder.model_copy(update={"max_events": 8})}
        )
    )


def _assert_delivered(settings: Settings) -> None:
    collection = settings.collection_for(settings.target_models[0])
    drained(settings)
    assert exact(settings, collection) == EXACT
    live = set(asyncio.run(live_chunks(settings)))
    assert live
    assert embed_done_keys(settings, collection, live) >= live


def test_an_unexpected_error_while_finishing_a_batch_ends_the_embedder_unacked(
    settings: Settings, tmp_path: Path
) -> None:
    """Faust would restart the agent in-process, ack what the failed batch held and commit past
    it. The embedder must exit instead, and its restart must deliver that batch again."""
    settings = _small_batches(settings)
    workers = Workers(settings, tmp_path)
    try:
        workers.start("chunker")
        embedder = workers.start(
            "embedder", env={"STREAMPROC_FAILPOINTS": "embedder.finish=3@RuntimeError"}
        )
        produce_events(settings, corpus_events("crash"))
        assert embedder.wait(timeout=300) == CRASH_EXIT_CODE
        assert "unexpected error, exiting" in workers.log("embedder")
        workers.procs.pop("embedder")
        workers.start("embedder")
        _assert_delivered(settings)
    finally:
        workers.stop()


def test_kafka_send_failures_are_retried_in_place(settings: Settings, tmp_path: Path) -> None:
    settings = _small_batches(settings)
    workers = Workers(settings, tmp_path)
    failing = {"STREAMPROC_FAILPOINTS": "kafka.send=4*KafkaTimeoutError"}
    try:
        chunker = workers.start("chunker", env=failing)
        embedder = workers.start("embedder", env=failing)
        produce_events(settings, corpus_events("resend"))
        _assert_delivered(settings)
        assert chunker.poll() is None
        assert embedder.poll() is None
        assert '"what": "send to' in workers.log("chunker")
    finally:
        workers.stop()
    assert records_to_end(settings, "chunk-requested.dlq") == []
    assert records_to_end(settings, "embed-requested.dlq") == []


MARKER = "zebra-quartz-7781"
# Checked against every log of the run (tests/conftest.py).
NEVER_LOGGED = (MARKER,)


def test_inputs_the_chunker_cannot_handle_are_dead_lettered_and_the_partition_moves_on(
    settings: Settings, tmp_path: Path
) -> None:
    """The kinds test_pipeline's bad-input test does not cover, each followed by a good
    document on the same partition (same key)."""
    settings = with_topics(
        settings.model_copy(
            update={"sources": settings.sources.model_copy(update={"file_roots": [tmp_path]})}
        )
    )
    (tmp_path / "zero.md").write_bytes(b"")
    codec = load_schemas(settings.schemas_dir).codec("ChunkRequested")

    def avro(e: dict[str, Any]) -> bytes:
        return codec.encode(codec.decode_json(json.dumps(e)))

    # JSON may escape a lone surrogate, which no UTF-8 string can hold.
    surrogate = (
        '{"event_id": "s1", "tenant": "bad", "doc_id": "surrogate", '
        '"content_type": "text/markdown", "content": "# T\\n\\n' + MARKER + ' \\ud800"}'
    ).encode()
    # 100,000 tiny sections in 700 kB: under the byte limit, far over the chunk limit.
    headings = "# a\nb\n" * 100_000
    bad: dict[str, tuple[bytes, str, list[tuple[str, bytes]]]] = {
        "surrogate": (surrogate, "schema", []),
        "wrong_types": (
            json.dumps({"event_id": 7, "tenant": ["bad"], "doc_id": "wrong_types"}).encode(),
            "schema",
            [],
        ),
        "zero_byte": (
            avro(event("bad", "zero_byte", None, content_uri=(tmp_path / "zero.md").as_uri())),
            "empty",
            [],
        ),
        "no_content": (avro(event("bad", "no_content", None)), "no_content", []),
        "binary": (
            avro(event("bad", "binary", "\x01\x02", content_type="application/octet-stream")),
            "unsupported_content_type",
            [],
        ),
        "nul_path": (
            avro(event("bad", "nul_path", None, content_uri=(tmp_path / "a").as_uri() + "%00b")),
            "unreadable_uri",
            [],
        ),
        "invalid_url": (
            avro(event("bad", "invalid_url", None, content_uri="http://[::1/x")),
            "unreadable_uri",
            [],
        ),
        "headings": (avro(event("bad", "headings", headings)), "too_many_chunks", []),
        "big_header": (
            avro(event("bad", "big_header", "# Fine\n\nBut its headers are not.")),
            "headers_too_large",
            [("x-upstream-blob", b"h" * 200_000)],
        ),
    }
    items = []
    for case, (value, _, headers) in bad.items():
        key = f"bad/{case}".encode()
        after = event("bad", f"{case}-after", f"# After {case}\n\nFine. {MARKER}")
        items += [(key, value, headers), (key, avro(after), [])]
    workers = Workers(settings, tmp_path)
    try:
        workers.start("chunker")
        workers.start("embedder")
        produce_raw(settings, items)
        # An embed request no schema of ours wrote (another producer, another version).
        produce_raw(
            settings, [(b"bad/foreign", b"\xc3\x01" + b"\x00" * 8 + b"x")], "embed-requested"
        )
        dead = collect(settings, "chunk-requested.dlq", lambda vs: len(vs) >= len(bad))
        reasons = {
            r.key.decode(): dict(r.headers)["streamproc.dlq.reason"].decode() for r, _ in dead
        }
        assert reasons == {f"bad/{case}": reason for case, (_, reason, _) in bad.items()}
        big = next(r for r, _ in dead if r.key == b"bad/big_header")
        assert dict(big.headers)["streamproc.dlq.headers_dropped"] == b"200015"
        foreign = collect(settings, "embed-requested.dlq", lambda vs: len(vs) >= 1)
        assert dict(foreign[0][0].headers)["streamproc.dlq.reason"] == b"schema"
        followers = {f"bad/{case}-after/p1/0" for case in bad}
        collection = settings.collection_for(settings.target_models[0])
        assert embed_done_keys(settings, collection, followers) >= followers
        assert workers.procs["chunker"].poll() is None
        assert workers.procs["embedder"].poll() is None
    finally:
        workers.stop()
    # The errors quoted the text: neither the worker's log nor the dead letters' headers may.
    assert MARKER not in workers.log("chunker")
    for headers, _ in records_with_headers(dead):
        assert MARKER not in json.dumps(headers)


def _done_for(settings: Settings, tenant: str, count: int) -> list[dict[str, Any]]:
    values = collect(
        settings,
        "embed-done",
        lambda vs: sum(isinstance(v, dict) and v.get("tenant") == tenant for _, v in vs) >= count,
    )
    return [v for _, v in values if isinstance(v, dict) and v.get("tenant") == tenant]


def test_unchanged_content_sent_again_heals_a_lost_object_and_reports_the_rest_current(
    settings: Settings, tmp_path: Path
) -> None:
    with_topics(settings)
    collection = settings.collection_for(settings.target_models[0])
    text = "# Guide\n\n" + "\n\n".join(
        f"## Part {i}\n\nParagraph {i} of the guide." for i in range(6)
    )
    with running_workers(settings, tmp_path):
        produce_events(settings, [event("heal", "guide", text)])
        keys = [
            f"heal/guide/p1/{i}"
            for i in range(len(expected_chunks(settings, text, "text/markdown")))
        ]
        assert len(keys) > 1
        _done_for(settings, "heal", len(keys))
        lost = keys[0]
        # A write lost behind the pipeline's back (a restored backup, a dead-lettered write).
        with connect(settings.weaviate) as client:
            WeaviateStore(client).delete(collection, "heal", [object_uuid(lost)])
        assert exact(settings, collection)["missing"] == [lost]
        produce_events(settings, [event("heal", "guide", text)])
        second = _done_for(settings, "heal", 2 * len(keys))[len(keys) :]
        assert {d["chunk_key"]: d["unchanged"] for d in second} == {k: k != lost for k in keys}
        assert all(d["status"] == "EMBEDDED" for d in second)
        assert exact(settings, collection) == EXACT
        # Forced: every chunk is embedded again.
        produce_events(settings, [event("heal", "guide", text, force=True)])
        third = _done_for(settings, "heal", 3 * len(keys))[2 * len(keys) :]
        assert {d["chunk_key"] for d in third} == set(keys)
        assert not any(d["unchanged"] for d in third)


def test_an_older_version_arriving_after_a_newer_one_is_skipped_as_stale(
    settings: Settings, tmp_path: Path
) -> None:
    """As when a DLQ replay re-sends an event that was superseded meanwhile, or a restart
    delivers an event again whose document moved on: skipped, counted and logged, never
    applied, and not dead-lettered (nothing is wrong with it)."""
    with_topics(settings)
    collection = settings.collection_for(settings.target_models[0])
    newer = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
    with running_workers(settings, tmp_path) as workers:
        produce_events(
            settings, [event("stale", "doc", "# Doc\n\nThe newer text.", ingested_at=newer)]
        )
        _done_for(settings, "stale", 1)
        produce_events(
            settings,
            [event("stale", "doc", "# Doc\n\nThe older text.", ingested_at=newer - 86_400_000)],
        )
        deadline = time.monotonic() + 60
        while '"msg": "stale event skipped"' not in workers.log("chunker"):
            assert time.monotonic() < deadline, "the stale event was never skipped"
            time.sleep(0.5)
    assert records_to_end(settings, "chunk-requested.dlq") == []
    assert exact(settings, collection) == EXACT
    with connect(settings.weaviate) as client:
        held = WeaviateStore(client).collection(collection, "stale").query.fetch_objects()
        texts = [str(o.properties["text"]) for o in held.objects]
        assert texts and all("newer" in t for t in texts)
