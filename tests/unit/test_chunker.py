"""The chunker's pure core: versions, staleness, unchanged chunks and forced re-embedding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streamproc.chunking.changes import DocumentState
from streamproc.chunking.tokenizers import splitter_for
from streamproc.errors import StaleEventError
from streamproc.pipeline.chunker import Chunker
from streamproc.settings import Settings
from tests.stand_ins import ingest_event

SETTINGS = Settings()
CHUNKER = Chunker(SETTINGS.chunking, splitter_for(SETTINGS))
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TEXT = "# Title\n\nFirst section.\n\n## Two\n\nSecond section."


def _event(op: str = "UPSERT", content: str | None = TEXT, **fields: Any) -> dict[str, Any]:
    return ingest_event(content, op, **fields)


def test_unchanged_chunks_are_requested_marked_if_changed() -> None:
    first = CHUNKER.process(_event(), None, T0)
    assert first.embed_requests and not any(r["if_changed"] for r in first.embed_requests)
    again = CHUNKER.process(_event(), first.state, T0 + timedelta(seconds=1))
    assert again.chunk_records == []
    assert [r["chunk_key"] for r in again.embed_requests] == [
        r["chunk_key"] for r in first.embed_requests
    ]
    assert all(r["if_changed"] for r in again.embed_requests)
    assert again.unchanged == len(first.embed_requests)


def test_force_re_embeds_every_chunk() -> None:
    first = CHUNKER.process(_event(), None, T0)
    forced = CHUNKER.process(_event(force=True), first.state, T0 + timedelta(seconds=1))
    assert not any(r["if_changed"] for r in forced.embed_requests)
    assert {k for k, _ in forced.chunk_records} == {r["chunk_key"] for r in first.embed_requests}


def test_an_older_event_is_refused_as_stale() -> None:
    newer = CHUNKER.process(_event(), None, T0 + timedelta(hours=1))
    with pytest.raises(StaleEventError):
        CHUNKER.process(_event(content="# Old\n\nOlder text."), newer.state, T0)


def test_a_delete_is_remembered_so_an_older_upsert_cannot_bring_the_document_back() -> None:
    first = CHUNKER.process(_event(), None, T0)
    deleted = CHUNKER.process(_event("DELETE", None), first.state, T0 + timedelta(hours=1))
    assert deleted.state.chunks == {}
    assert {r["op"] for r in deleted.embed_requests} == {"DELETE"}
    with pytest.raises(StaleEventError):
        CHUNKER.process(_event(), DocumentState.from_json(deleted.state.to_json()), T0)


def test_state_round_trips_and_reads_the_format_without_versions() -> None:
    state = CHUNKER.process(_event(), None, T0).state
    assert DocumentState.from_json(state.to_json()) == state
    legacy = DocumentState.from_json('{"t/d/p1/0": "abc"}')
    assert legacy == DocumentState(None, {"t/d/p1/0": "abc"})


def test_html_main_content_setting_decides_whether_page_furniture_is_chunked() -> None:
    page = (
        "<html><body><div class='navheader'>Prev Up Home Next</div>"
        "<h1>Keys</h1><p>Keys rotate every 90 days.</p>"
        "<div class='navfooter'>Prev Up Home Next</div></body></html>"
    )
    event = _event(content=page, content_type="text/html")

    def texts(main_content: bool) -> list[str]:
        settings = SETTINGS.chunking.model_copy(update={"html_main_content": main_content})
        out = Chunker(settings, splitter_for(SETTINGS)).process(event, None, T0)
        return [r["chunk"]["text"] for r in out.embed_requests]

    assert texts(True) == ["Keys rotate every 90 days."]
    assert "Prev Up Home Next" in "\n".join(texts(False))
