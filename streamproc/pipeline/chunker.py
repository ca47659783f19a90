"""One ingest-complete event in, chunk records and embed requests out. No Kafka in here."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streamproc.chunking.changes import DocumentState, compare, fingerprint
from streamproc.chunking.extract import extract_sections
from streamproc.chunking.split import Splitter
from streamproc.content import check_sha256, decode_text, read_uri
from streamproc.errors import PermanentError, StaleEventError
from streamproc.failpoints import fail_point
from streamproc.naming import chunk_key, document_key, weaviate_tenant
from streamproc.settings import ChunkingSettings, SourceSettings


@dataclass
class ChunkerOutput:
    document_key: str
    # (chunk key, ChunkRecord or None for a tombstone) for the compacted chunks topic.
    chunk_records: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    # EmbedRequested records for embed-requested (key: the document key): the changed and the
    # vanished chunks, and the unchanged ones marked `if_changed`.
    embed_requests: list[dict[str, Any]] = field(default_factory=list)
    state: DocumentState = field(default_factory=DocumentState)
    unchanged: int = 0


class Chunker:
    def __init__(
        self,
        settings: ChunkingSettings,
        splitter: Splitter,
        sources: SourceSettings | None = None,
    ) -> None:
        self.settings = settings
        self.splitter = splitter
        self.sources = sources or SourceSettings()

    def process(
        self, event: Mapping[str, Any], previous: DocumentState | None, kafka_time: datetime
    ) -> ChunkerOutput:
        fail_point("chunker.process")
        _check_names(event)
        ingested_at = event.get("ingested_at") or kafka_time
        doc_key = document_key(event["tenant"], event["doc_id"])
        previous = previous or DocumentState()
        if previous.ingested_at is not None and ingested_at < previous.ingested_at:
            raise StaleEventError(
                f"event ingested at {ingested_at.isoformat()} is older than the version applied, "
                f"ingested at {previous.ingested_at.isoformat()}"
            )
        if event["op"] == "DELETE":
            out = ChunkerOutput(doc_key, state=DocumentState(ingested_at))
            self._tombstone(out, event, list(previous.chunks), ingested_at)
            return out

        records = self._records(event, ingested_at)
        state = {k: fingerprint(r["heading_path"], r["text"]) for k, r in records.items()}
        # Forced: every chunk counts as changed, so each is embedded again everywhere.
        changes = compare({} if event.get("force") else previous.chunks, state)
        out = ChunkerOutput(
            doc_key, state=DocumentState(ingested_at, state), unchanged=len(changes.unchanged)
        )
        for key in changes.changed:
            out.chunk_records.append((key, records[key]))
        # Unchanged chunks are still requested, marked: the embedder writes one only where a
        # collection lacks it (a lost or dead-lettered write heals) and otherwise reports it
        # current, so whoever waits for this version's embed-done gets one.
        unchanged = set(changes.unchanged)
        for key in [*changes.changed, *changes.unchanged]:
            out.embed_requests.append(
                _request(event, "UPSERT", key, records[key], ingested_at, key in unchanged)
            )
        self._tombstone(out, event, [k for k in previous.chunks if k not in state], ingested_at)
        return out

    def _records(self, event: Mapping[str, Any], ingested_at: datetime) -> dict[str, Any]:
        """The document's ChunkRecords by chunk key, in chunk order."""
        data = self._content(event)
        doc_sha = check_sha256(data, event.get("content_sha256"))
        text = decode_text(data)
        if not text.strip():
            raise PermanentError("document has no text", reason="empty")
        sections = extract_sections(
            text, event["content_type"], main_content=self.settings.html_main_content
        )
        # Every section with text gives at least one chunk: refused before the costly split
        # (100,000 one-word sections took seconds to split only to be refused).
        self._check_chunk_count(sum(any(b.strip() for b in s.blocks) for s in sections))
        drafts = self.splitter.split(sections)
        if not drafts:
            raise PermanentError("document has no text after extraction", reason="empty")
        self._check_chunk_count(len(drafts))

        policy = self.settings.policy_version
        records = {}
        for draft in drafts:
            key = chunk_key(event["tenant"], event["doc_id"], policy, draft.index)
            records[key] = {
                "chunk_key": key,
                "tenant": event["tenant"],
                "doc_id": event["doc_id"],
                "chunk_index": draft.index,
                "policy_version": policy,
                "text": draft.text,
                "text_sha256": hashlib.sha256(draft.text.encode()).hexdigest(),
                "heading_path": list(draft.heading_path),
                "char_count": len(draft.text),
                "token_counts": draft.token_counts,
                "truncated": False,
                "source_uri": event.get("content_uri"),
                "content_type": event["content_type"],
                "doc_sha256": doc_sha,
                "ingested_at": ingested_at,
            }
        return records

    def _check_chunk_count(self, chunks: int) -> None:
        if chunks > self.settings.max_chunks_per_document:
            raise PermanentError(
                f"document gives {chunks} chunks or more, over the limit of "
                f"{self.settings.max_chunks_per_document}",
                reason="too_many_chunks",
            )

    def _content(self, event: Mapping[str, Any]) -> bytes:
        limit = self.settings.max_document_bytes
        if event.get("content") is not None:
            data = event["content"].encode("utf-8")
            if len(data) > limit:
                raise PermanentError(
                    f"document is larger than the {limit}-byte limit", reason="too_large"
                )
            return data
        if event.get("content_uri"):
            return read_uri(event["content_uri"], limit, self.sources)
        raise PermanentError("event has neither content nor content_uri", reason="no_content")

    @staticmethod
    def _tombstone(
        out: ChunkerOutput, event: Mapping[str, Any], keys: list[str], ingested_at: datetime
    ) -> None:
        for key in keys:
            out.chunk_records.append((key, None))
            out.embed_requests.append(_request(event, "DELETE", key, None, ingested_at, False))


def _check_names(event: Mapping[str, Any]) -> None:
    try:
        weaviate_tenant(event["tenant"])
    except ValueError as exc:
        raise PermanentError(str(exc), reason="invalid_tenant") from exc
    if not event["doc_id"]:
        raise PermanentError("doc_id is empty", reason="invalid_doc_id")


def _request(
    event: Mapping[str, Any],
    op: str,
    key: str,
    chunk: dict[str, Any] | None,
    ingested_at: datetime,
    if_changed: bool,
) -> dict[str, Any]:
    """One EmbedRequested record."""
    return {
        "op": op,
        "chunk_key": key,
        "tenant": event["tenant"],
        "doc_id": event["doc_id"],
        "chunk": chunk,
        "ingested_at": ingested_at,
        "if_changed": if_changed,
    }
