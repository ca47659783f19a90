"""What changed in a document since its last version: the chunker's per-document memory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime


def fingerprint(heading_path: Sequence[str], text: str) -> str:
    """Hash of what a chunk's vectors depend on: its text and its heading path."""
    h = hashlib.sha256()
    for part in heading_path:
        h.update(part.encode())
        h.update(b"\x1f")
    h.update(b"\x1e")
    h.update(text.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class DocumentChanges:
    changed: list[str]  # new or different: embed
    unchanged: list[str]  # same fingerprint: skip
    vanished: list[str]  # gone from the document: tombstone and delete


def compare(previous: Mapping[str, str], current: Mapping[str, str]) -> DocumentChanges:
    """Chunk keys mapped to fingerprints, before and after."""
    changed = [k for k, fp in current.items() if previous.get(k) != fp]
    unchanged = [k for k, fp in current.items() if previous.get(k) == fp]
    vanished = [k for k in previous if k not in current]
    return DocumentChanges(changed, unchanged, vanished)


@dataclass(frozen=True)
class DocumentState:
    """What the chunker remembers of a document: the version it last applied and its chunks'
    fingerprints. A DELETE is remembered too (no chunks), so that an older event replayed
    later, from a DLQ for instance, cannot bring the document back."""

    ingested_at: datetime | None = None
    chunks: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        at = None if self.ingested_at is None else int(self.ingested_at.timestamp() * 1000)
        return json.dumps({"ingested_at": at, "chunks": self.chunks})

    @classmethod
    def from_json(cls, text: str) -> DocumentState:
        data = json.loads(text)
        if "chunks" not in data:
            # Written before versions were kept: chunk key -> fingerprint only.
            return cls(None, data)
        at = data["ingested_at"]
        return cls(
            None if at is None else datetime.fromtimestamp(at / 1000, tz=UTC), data["chunks"]
        )
