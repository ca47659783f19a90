"""The pure parts of the fault suite: its load, its exact check, its recovery figure."""

from __future__ import annotations

from datetime import UTC, datetime

from streamproc.naming import object_uuid
from tests.faults.checker import (
    LiveChunk,
    compare_objects,
    compare_topic,
    missing_embed_done,
    unexpected_dead_letters,
)
from tests.faults.harness import next_batch_after
from tests.faults.load import TENANTS, build_load


def _chunk(key: str, sha: str = "a" * 64, ingested_ms: int = 1_000) -> LiveChunk:
    return LiveChunk(key, sha, ingested_ms)


def test_compare_objects_names_lost_stale_and_unexpected_keys() -> None:
    expected = {k: _chunk(k) for k in ("t/d/p1/0", "t/d/p1/1", "t/d/p1/2")}
    actual = {
        object_uuid("t/d/p1/0"): ("t/d/p1/0", "a" * 64),
        object_uuid("t/d/p1/1"): ("t/d/p1/1", "b" * 64),  # an older version
        object_uuid("t/gone/p1/0"): ("t/gone/p1/0", "c" * 64),  # deleted, still there
    }
    lost, duplicated = compare_objects("C", expected, actual)
    assert [f.key for f in lost] == ["t/d/p1/2"]
    assert [(f.key, f.why.split(":")[0]) for f in duplicated] == [
        ("t/d/p1/1", "stale version"),
        ("t/gone/p1/0", "present but not live"),
    ]


def test_compare_objects_accepts_the_exact_set() -> None:
    expected = {k: _chunk(k) for k in ("t/d/p1/0", "t/d/p1/1")}
    actual = {object_uuid(k): (k, c.text_sha256) for k, c in expected.items()}
    assert compare_objects("C", expected, actual) == ([], [])


def _done(key: str, status: str, ingested_ms: int, latency_ms: int = 250) -> dict[str, object]:
    embedded = datetime.fromtimestamp((ingested_ms + latency_ms) / 1000, tz=UTC)
    return {
        "chunk_key": key,
        "collection": "C",
        "status": status,
        "embedded_at": embedded,
        "latency_ms": latency_ms,
    }


def test_embed_done_must_be_embedded_for_the_latest_version() -> None:
    live = [_chunk("t/a/p1/0", ingested_ms=5_000), _chunk("t/b/p1/0", ingested_ms=5_000)]
    done = [
        _done("t/a/p1/0", "EMBEDDED", 5_000),
        _done("t/b/p1/0", "EMBEDDED", 4_000),  # the previous version only
        _done("t/b/p1/0", "FAILED", 5_000),
    ]
    findings = missing_embed_done(live, done, ["C"])
    assert [(f.key, f.why) for f in findings] == [("t/b/p1/0", "no EMBEDDED for latest version")]
    assert [f.key for f in missing_embed_done(live, done, ["C", "D"])][1:] == [
        "t/a/p1/0",
        "t/b/p1/0",
    ]


def test_dead_letters_outside_the_expected_keys_are_reported() -> None:
    records = [("chunk-requested.dlq", "t/bad", "empty"), ("embed-requested.dlq", "t/ok", "x")]
    found = unexpected_dead_letters(records, frozenset({"t/bad"}))
    assert [(f.where, f.key) for f in found] == [("embed-requested.dlq", "t/ok")]


def test_next_batch_after_recovery() -> None:
    assert next_batch_after([1_000, 4_500, 9_000], 4.0) == 0.5
    assert next_batch_after([1_000], 4.0) is None


def test_the_load_is_deterministic_with_updates_and_deletes() -> None:
    first, second = build_load(), build_load()
    strip = [[{k: v for k, v in e.items() if k != "event_id"} for e in w] for w in first.waves]
    assert strip == [
        [{k: v for k, v in e.items() if k != "event_id"} for e in w] for w in second.waves
    ]
    summary = first.summary()
    assert summary["deletes"] > 0 and summary["upserts"] > 300
    assert {e["tenant"] for w in first.waves for e in w} == set(TENANTS)
    doc_ids = [e["doc_id"] for w in first.waves for e in w if e.get("op") != "DELETE"]
    assert len(set(doc_ids)) == 300 and len(doc_ids) > 300  # some documents change later


def test_the_chunk_topic_is_checked_against_the_loads_final_documents() -> None:
    expected = {"t/a/p1/0": "a" * 64, "t/a/p1/1": "b" * 64, "t/c/p1/0": "c" * 64}
    live = {
        "t/a/p1/0": _chunk("t/a/p1/0"),
        "t/a/p1/1": _chunk("t/a/p1/1"),  # an older text
        "t/gone/p1/0": _chunk("t/gone/p1/0"),  # its document was deleted
    }
    lost, duplicated = compare_topic(expected, live)
    assert [(f.key, f.why) for f in lost] == [
        ("t/a/p1/1", "stale version"),
        ("t/c/p1/0", "missing"),
    ]
    assert [f.key for f in duplicated] == ["t/gone/p1/0"]


def test_final_documents_follow_the_last_event_of_each_document() -> None:
    load = build_load(documents=120, waves=6)
    final = load.final_documents()
    last: dict[tuple[str, str], dict[str, object]] = {}
    for wave in load.waves:
        for e in wave:
            last[(e["tenant"], e["doc_id"])] = e
    assert final.keys() == last.keys()
    deleted = [k for k, e in last.items() if e.get("op") == "DELETE"]
    assert deleted and all(final[k] is None for k in deleted)
