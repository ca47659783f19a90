"""What a new version of a document changes: fingerprints, the comparison, the kept state."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from streamproc.chunking.changes import DocumentChanges, DocumentState, compare, fingerprint
from streamproc.chunking.tokenizers import splitter_for
from streamproc.errors import StaleEventError
from streamproc.pipeline.chunker import Chunker
from streamproc.settings import Settings
from tests.stand_ins import ingest_event

SETTINGS = Settings()
CHUNKER = Chunker(SETTINGS.chunking, splitter_for(SETTINGS))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_fingerprint_is_a_sha256_of_the_heading_path_and_the_text() -> None:
    fp = fingerprint(("Guide", "Install"), "Run it.")
    assert fp == hashlib.sha256(b"Guide\x1fInstall\x1f\x1eRun it.").hexdigest()
    assert fp == fingerprint(["Guide", "Install"], "Run it.")  # a list as the records hold it
    assert fingerprint((), "Run it.") == hashlib.sha256(b"\x1eRun it.").hexdigest()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((("Guide",), "Run it."), (("Guide",), "Run it!")),  # the text
        ((("Guide",), "Run it."), (("Guide", "Install"), "Run it.")),  # a deeper heading
        ((("Guide",), "Run it."), (("Manual",), "Run it.")),  # a renamed heading
        ((("ab",), "c"), (("a", "b"), "c")),  # where the heading parts split
        ((("a",), "bc"), (("ab",), "c")),  # where the heading ends and the text starts
        (((), "Run it."), (("",), "Run it.")),  # no heading against an empty one
    ],
)
def test_whatever_the_vectors_depend_on_changes_the_fingerprint(
    a: tuple[tuple[str, ...], str], b: tuple[tuple[str, ...], str]
) -> None:
    assert fingerprint(*a) != fingerprint(*b)


def test_compare_sorts_chunks_into_changed_unchanged_and_vanished() -> None:
    previous = {"d/0": "a", "d/1": "b", "d/2": "c", "d/3": "d"}
    current = {"d/0": "a", "d/1": "B", "d/4": "e", "d/2": "c"}
    changes = compare(previous, current)
    # Changed and unchanged keep the new version's order, vanished the old one's.
    assert changes == DocumentChanges(
        changed=["d/1", "d/4"], unchanged=["d/0", "d/2"], vanished=["d/3"]
    )
    # Every current key is in exactly one of changed and unchanged.
    assert set(changes.changed) | set(changes.unchanged) == current.keys()
    assert not set(changes.changed) & set(changes.unchanged)
    assert set(changes.vanished) == previous.keys() - current.keys()


def test_a_first_version_changes_everything_and_an_empty_one_removes_everything() -> None:
    chunks = {"d/0": "a", "d/1": "b"}
    assert compare({}, chunks) == DocumentChanges(["d/0", "d/1"], [], [])
    assert compare(chunks, {}) == DocumentChanges([], [], ["d/0", "d/1"])
    assert compare(chunks, dict(chunks)) == DocumentChanges([], ["d/0", "d/1"], [])
    assert compare({}, {}) == DocumentChanges([], [], [])


@pytest.mark.parametrize(
    "state",
    [
        DocumentState(),
        DocumentState(T0, {}),  # a DELETE: remembered without chunks
        DocumentState(T0 + timedelta(milliseconds=1234), {"t/d/p1/0": "a", "t/d/p1/1": "b"}),
        DocumentState(None, {"t/d/p1/0": "a"}),
    ],
)
def test_a_state_round_trips_through_json(state: DocumentState) -> None:
    assert DocumentState.from_json(state.to_json()) == state


def test_a_state_keeps_milliseconds_in_utc() -> None:
    at = datetime(2026, 1, 1, 3, 0, 0, 123456, tzinfo=timezone(timedelta(hours=3)))
    restored = DocumentState.from_json(DocumentState(at, {}).to_json())
    assert restored.ingested_at == at.replace(microsecond=123000)
    assert restored.ingested_at is not None and restored.ingested_at.tzinfo == UTC
    assert DocumentState(at, {}).to_json() == '{"ingested_at": 1767225600123, "chunks": {}}'


def test_the_state_before_versions_were_kept_reads_as_chunks_without_a_version() -> None:
    assert DocumentState.from_json('{"t/d/p1/0": "a", "t/d/p1/1": "b"}') == DocumentState(
        None, {"t/d/p1/0": "a", "t/d/p1/1": "b"}
    )
    assert DocumentState.from_json("{}") == DocumentState()


# What the chunker does with a new version, on the real splitter.

V1 = "# Guide\n\nIntro text.\n\n## Install\n\nRun the installer.\n\n## Remove\n\nDelete the folder."


def _requests(out: Any) -> dict[str, tuple[str, bool]]:
    return {r["chunk_key"]: (r["op"], r["if_changed"]) for r in out.embed_requests}


def test_a_new_version_embeds_what_changed_marks_what_did_not_and_deletes_what_went() -> None:
    first = CHUNKER.process(ingest_event(V1), None, T0)
    assert list(first.state.chunks) == ["t/d/p1/0", "t/d/p1/1", "t/d/p1/2"]
    texts = {r["chunk_key"]: r["chunk"]["text"] for r in first.embed_requests}
    assert texts == {
        "t/d/p1/0": "Intro text.",
        "t/d/p1/1": "Run the installer.",
        "t/d/p1/2": "Delete the folder.",
    }
    # The install section is edited and the remove section goes.
    v2 = "# Guide\n\nIntro text.\n\n## Install\n\nRun the new installer."
    second = CHUNKER.process(ingest_event(v2), first.state, T0 + timedelta(seconds=1))
    assert _requests(second) == {
        "t/d/p1/1": ("UPSERT", False),
        "t/d/p1/0": ("UPSERT", True),
        "t/d/p1/2": ("DELETE", False),
    }
    records = dict(second.chunk_records)
    assert records.keys() == {"t/d/p1/1", "t/d/p1/2"}
    assert records["t/d/p1/2"] is None  # a tombstone for the compacted chunks topic
    changed = records["t/d/p1/1"]
    assert changed is not None
    assert changed["text_sha256"] == hashlib.sha256(b"Run the new installer.").hexdigest()
    assert second.unchanged == 1
    assert second.state == DocumentState(
        T0 + timedelta(seconds=1),
        {
            "t/d/p1/0": first.state.chunks["t/d/p1/0"],
            "t/d/p1/1": fingerprint(("Guide", "Install"), "Run the new installer."),
        },
    )


def test_a_renamed_heading_re_embeds_its_chunks_with_the_same_text() -> None:
    first = CHUNKER.process(ingest_event(V1), None, T0)
    renamed = V1.replace("## Install", "## Setup")
    second = CHUNKER.process(ingest_event(renamed), first.state, T0 + timedelta(seconds=1))
    assert [k for k, _ in second.chunk_records] == ["t/d/p1/1"]
    assert _requests(second)["t/d/p1/1"] == ("UPSERT", False)
    assert {k for k, (_, marked) in _requests(second).items() if marked} == {
        "t/d/p1/0",
        "t/d/p1/2",
    }


def test_a_version_with_the_same_time_applies_and_an_older_one_is_stale() -> None:
    first = CHUNKER.process(ingest_event(V1), None, T0)
    # Kafka time decides when the event names none; the same instant is not older.
    again = CHUNKER.process(ingest_event(V1), first.state, T0)
    assert again.state == first.state
    explicit = CHUNKER.process(
        ingest_event(V1, ingested_at=T0 + timedelta(hours=1)), first.state, T0
    )
    assert explicit.state.ingested_at == T0 + timedelta(hours=1)
    with pytest.raises(StaleEventError):
        CHUNKER.process(ingest_event(V1), explicit.state, T0 + timedelta(minutes=30))


def test_a_delete_tombstones_every_chunk_of_the_last_version_only() -> None:
    first = CHUNKER.process(ingest_event(V1), None, T0)
    shorter = CHUNKER.process(
        ingest_event("# Guide\n\nIntro text."), first.state, T0 + timedelta(1)
    )
    assert {k for k, (op, _) in _requests(shorter).items() if op == "DELETE"} == {
        "t/d/p1/1",
        "t/d/p1/2",
    }
    deleted = CHUNKER.process(ingest_event(None, "DELETE"), shorter.state, T0 + timedelta(2))
    assert deleted.chunk_records == [("t/d/p1/0", None)]
    assert _requests(deleted) == {"t/d/p1/0": ("DELETE", False)}
    # After the delete, the same text comes back as a first version: everything changed.
    back = CHUNKER.process(ingest_event(V1), deleted.state, T0 + timedelta(3))
    assert not any(marked for _, marked in _requests(back).values())
    assert back.state.chunks == first.state.chunks
