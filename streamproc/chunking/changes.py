"""What changed in a document since its last version: the chunker's per-document memory."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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
